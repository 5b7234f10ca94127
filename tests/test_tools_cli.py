"""The tools' command lines: numeric arguments checked at parse time, outputs never
overwritten by another input of the same run."""
import importlib.util
import os.path as osp
import sys

import pytest

from .conftest import REPO


def _tool(name):
    sys.path.insert(0, osp.join(REPO, 'tools'))
    spec = importlib.util.spec_from_file_location(f'tool_{name}', osp.join(REPO, 'tools',
                                                                           f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('tool, argv, message', [
    ('explain', ['--topk', '0'], 'argument --topk: 0 is less than 1'),
    ('explain', ['--topk', '-1'], 'argument --topk: -1 is less than 1'),
    ('explain', ['--max-images', '-1'], 'argument --max-images: -1 is less than 0'),
    ('explain', ['--score-thr', '1.5'], 'argument --score-thr: 1.5 is not in [0, 1]'),
    ('explain', ['--topk', 'two'], "argument --topk: 'two' is not an integer"),
    ('audit', ['--drise-masks', '0'], 'argument --drise-masks: 0 is less than 1'),
    ('audit', ['--drise-masks', '-5'], 'argument --drise-masks: -5 is less than 1'),
    ('audit', ['--vps-steps', '0'], 'argument --vps-steps: 0 is less than 1'),
    ('audit', ['--vps-regions', '0'], 'argument --vps-regions: 0 is less than 2'),
    ('audit', ['--deletion-steps', '-3'], 'argument --deletion-steps: -3 is less than 0'),
    ('audit', ['--iou-thr', '-0.1'], 'argument --iou-thr: -0.1 is not in [0, 1]'),
    ('compare_nms', ['--iou', 'nan'], 'argument --iou: nan is not in [0, 1]'),
])
def test_bad_numbers_are_refused_at_parse_time(tool, argv, message, monkeypatch, capsys):
    positional = ['cfg.py', 'ckpt.pth'] + (['img.jpg'] if tool == 'explain' else [])
    out = [] if tool == 'compare_nms' else ['--out-dir', 'out']
    monkeypatch.setattr(sys, 'argv', [tool, *positional, *out, *argv])
    with pytest.raises(SystemExit) as e:
        _tool(tool).parse_args()
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_good_numbers_parse(monkeypatch):
    monkeypatch.setattr(sys, 'argv', ['audit', 'cfg.py', 'ckpt.pth', '--out-dir', 'o',
                                      '--drise-masks', '1', '--vps-regions', '2',
                                      '--deletion-steps', '0', '--iou-thr', '1'])
    args = _tool('audit').parse_args()
    assert (args.drise_masks, args.vps_regions, args.deletion_steps, args.iou_thr) == (1, 2, 0,
                                                                                      1.0)


def test_images_of_the_same_name_get_distinct_outputs(tmp_path):
    explain = _tool('explain')
    for folder in ('a', 'b'):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / 'x.jpg').write_bytes(b'')
    (tmp_path / 'a' / 'x.png').write_bytes(b'')
    (tmp_path / 'a' / 'y.jpg').write_bytes(b'')
    files = explain.list_images([str(tmp_path / 'a'), str(tmp_path / 'b'),
                                 str(tmp_path / 'a' / 'y.jpg')])  # y.jpg listed twice
    assert [osp.relpath(f, tmp_path) for f in files] == ['a/x.jpg', 'a/x.png', 'a/y.jpg',
                                                          'b/x.jpg']
    assert explain.output_stems(files) == ['a__x_jpg', 'a__x_png', 'y', 'b__x_jpg']
    assert explain.output_stems(files[2:3]) == ['y']
