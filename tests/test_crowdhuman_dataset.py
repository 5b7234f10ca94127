import json
import os
import shutil

import pytest

from odamtrain.datasets import OdgtError, StrictCrowdHumanDataset


def _person(x=10, y=10, w=20, h=50, **extra):
    return dict(tag='person', fbox=[x, y, w, h], vbox=[x, y, w, h], hbox=[x, y, 8, 8],
                extra=dict(ignore=0), **extra)


@pytest.fixture
def root(tmp_path, synthetic_root):
    """A data root with two real images and an annotation file we can corrupt."""
    shutil.copytree(os.path.join(synthetic_root, 'Images'), tmp_path / 'Images')
    ids = sorted(f[:-4] for f in os.listdir(tmp_path / 'Images'))[:2]
    return tmp_path, ids


def _write(root, lines, name='annotation_val.odgt'):
    path = root / name
    path.write_text(''.join(line if isinstance(line, str) else json.dumps(line) + '\n'
                            for line in lines))
    return name


def _build(root, ann, **kw):
    return StrictCrowdHumanDataset(data_root=str(root), ann_file=ann,
                                   data_prefix=dict(img='Images/'), pipeline=[], **kw)


def _error(root, lines, **kw):
    with pytest.raises(OdgtError) as e:
        _build(root, _write(root, lines), **kw)
    return str(e.value)


def test_valid_file_parses(root):
    root, ids = root
    ds = _build(root, _write(root, [dict(ID=ids[0], gtboxes=[_person()]),
                                    dict(ID=ids[1], gtboxes=[])]))
    assert len(ds) == 2
    info = ds.get_data_info(0)
    assert info['instances'][0]['bbox'] == [10, 10, 30, 60]
    assert ds.get_data_info(1)['instances'] == []
    assert os.path.isfile(root / 'id_hw_val.json')  # size cache written


def test_invalid_json_names_file_and_line(root):
    root, ids = root
    msg = _error(root, [dict(ID=ids[0], gtboxes=[]), '{"ID": "x", gtboxes: []}\n'])
    assert 'annotation_val.odgt, line 2' in msg and 'invalid JSON' in msg


@pytest.mark.parametrize('fbox, expect', [
    (None, "field 'fbox' is missing"),
    ([1, 2, 3], "expected [x, y, w, h]"),
    ([10, 10, -5, 20], 'expected both > 0'),
    ([10, 10, 0, 20], 'expected both > 0'),
    ([10, 10, 20, 'a'], 'four finite numbers'),
    # finite in float64, not as mmdet stores boxes (float32)
    ([1e38, 10, 3e38, 20], 'overflows float32'),
    ([1e39, 10, 20, 20], 'overflows float32'),
    ([10, 10, 1e-320, 20], 'in float32; expected both > 0'),
    ([1000.0, 10, 1e-5, 20], 'in float32; expected both > 0'),
    ([5000, 10, 20, 20], 'lies entirely outside'),
    ([-100, -100, 50, 50], 'lies entirely outside'),
])
def test_bad_fbox_names_line_id_and_field(root, fbox, expect):
    root, ids = root
    box = _person()
    if fbox is None:
        del box['fbox']
    else:
        box['fbox'] = fbox
    msg = _error(root, [dict(ID=ids[0], gtboxes=[_person()]), dict(ID=ids[1], gtboxes=[box])])
    assert f'line 2 (ID {ids[1]!r}) gtboxes[0]' in msg
    assert expect in msg


def test_partially_outside_box_is_fine(root):
    root, ids = root
    ds = _build(root, _write(root, [dict(ID=ids[0], gtboxes=[_person(x=-10, y=-20)])]))
    assert ds.get_data_info(0)['instances'][0]['bbox'] == [-10, -20, 10, 30]


def test_non_strict_drops_bad_box(root):
    root, ids = root
    ds = _build(root, _write(root, [dict(ID=ids[0], gtboxes=[_person(), _person(x=5000)])]),
                strict=False)
    assert len(ds.get_data_info(0)['instances']) == 1


def test_missing_and_unreadable_image(root):
    root, ids = root
    msg = _error(root, [dict(ID='no_such_image', gtboxes=[])])
    assert "ID 'no_such_image'" in msg and 'no_such_image.jpg not found' in msg
    (root / 'Images' / 'broken.jpg').write_bytes(b'not a jpeg')
    msg = _error(root, [dict(ID='broken', gtboxes=[])])
    assert "ID 'broken'" in msg and 'cannot be read' in msg


def test_missing_image_with_size_cache(root):
    root, ids = root
    (root / 'id_hw_val.json').write_text(json.dumps({'gone': [100, 100]}))
    msg = _error(root, [dict(ID='gone', gtboxes=[])])
    assert 'gone.jpg not found' in msg


def test_wrong_data_root_and_missing_or_empty_ann_file(tmp_path, root):
    root, ids = root
    with pytest.raises(OdgtError, match='data_root .* does not exist'):
        _build(tmp_path / 'nowhere', 'annotation_val.odgt')
    # lazily built for its metainfo (as mmdet's init_detector does): no data needed
    lazy = _build(tmp_path / 'nowhere', 'annotation_val.odgt', lazy_init=True)
    assert lazy.metainfo['classes'] == ('person',)
    with pytest.raises(OdgtError, match='annotation_train.odgt not found'):
        _build(root, 'annotation_train.odgt')
    with pytest.raises(OdgtError, match='is empty'):
        _build(root, _write(root, ['\n']))


def test_other_field_errors(root):
    root, ids = root
    assert "field 'ID'" in _error(root, [dict(gtboxes=[])])
    assert "field 'gtboxes'" in _error(root, [dict(ID=ids[0])])
    assert "field 'tag'" in _error(root, [dict(ID=ids[0], gtboxes=[dict(fbox=[1, 1, 2, 2])])])
    assert 'duplicate ID' in _error(root, [dict(ID=ids[0], gtboxes=[])] * 2)
    bad_vbox = _person()
    bad_vbox['vbox'] = [1, 1, -2, 3]
    assert "field 'vbox'" in _error(root, [dict(ID=ids[0], gtboxes=[bad_vbox])])


def test_ann_file_name_without_train_or_val(root):
    """mmdet's CrowdHumanDataset crashes on such a name; ours caches sizes per file."""
    root, ids = root
    ann = _write(root, [dict(ID=ids[0], gtboxes=[_person()])], name='annotation_subset.odgt')
    assert len(_build(root, ann)) == 1
    assert os.path.isfile(root / 'id_hw_subset.json')


def test_missing_vbox_hbox_default_to_fbox(root):
    root, ids = root
    box = dict(tag='person', fbox=[10, 10, 20, 50])
    inst = _build(root, _write(root, [dict(ID=ids[0], gtboxes=[box])])).get_data_info(0)
    assert inst['instances'][0]['vbox'] == inst['instances'][0]['fbox'] == [10, 10, 30, 60]


def test_filter_empty_gt_in_training_only(root):
    root, ids = root
    ignored = dict(_person(), extra=dict(ignore=1))
    ann = _write(root, [dict(ID=ids[0], gtboxes=[_person()]), dict(ID=ids[1], gtboxes=[ignored])])
    train = _build(root, ann, filter_cfg=dict(filter_empty_gt=True))
    test = _build(root, ann, filter_cfg=dict(filter_empty_gt=True), test_mode=True)
    assert [d['img_id'] for d in train] == [ids[0]]
    assert len(test) == 2


def test_unreadable_image_at_load_time_names_it(root):
    root, ids = root
    ds = StrictCrowdHumanDataset(
        data_root=str(root), ann_file=_write(root, [dict(ID=ids[0], gtboxes=[_person()])]),
        data_prefix=dict(img='Images/'), pipeline=[dict(type='LoadImageFromFile')],
        test_mode=True)
    (root / 'Images' / f'{ids[0]}.jpg').write_bytes(b'corrupted after indexing')
    with pytest.raises(OdgtError, match=f"ID '{ids[0]}'.*cannot be read"):
        ds[0]


@pytest.mark.parametrize('change, expect', [
    (dict(tag='Person'), "field 'tag' is 'Person'; expected 'person' or 'mask'"),
    (dict(tag='persons'), "field 'tag' is 'persons'"),
    (dict(extra=dict(ignore='0')), "field 'extra.ignore' is '0'; expected 0 or 1"),
    (dict(extra=dict(ignore=2)), "field 'extra.ignore' is 2"),
    (dict(extra=dict(ignore=0.0)), "field 'extra.ignore' is 0.0"),
    (dict(fbox=[10 ** 400, 1, 2, 3]), "field 'fbox' is [1000000000"),
])
def test_values_outside_the_toolkit_are_named(root, change, expect):
    root, ids = root
    msg = _error(root, [dict(ID=ids[0], gtboxes=[dict(_person(), **change)])])
    assert 'line 1' in msg and f"ID '{ids[0]}'" in msg and 'gtboxes[0]' in msg
    assert expect in msg


def test_toolkit_values_are_accepted(root):
    root, ids = root
    boxes = [_person(), dict(_person(), extra=dict(ignore=1)), dict(_person(), tag='mask'),
             dict(_person(), extra=dict(ignore=True))]
    ds = _build(root, _write(root, [dict(ID=ids[0], gtboxes=boxes)]))
    assert [i['ignore_flag'] for i in ds.get_data_info(0)['instances']] == [0, 1, 1, 1]


@pytest.mark.parametrize('image_id', ['../../etc/passwd', '/abs/path', 'a\\b', '..', 'x\x00'])
def test_ids_that_are_paths_are_refused(root, image_id):
    root, ids = root
    msg = _error(root, [dict(ID=image_id, gtboxes=[])])
    assert 'line 1' in msg and "field 'ID'" in msg and 'without path separators' in msg


def test_non_utf8_and_huge_integer_lines_are_named(root):
    root, ids = root
    good = json.dumps(dict(ID=ids[0], gtboxes=[])) + '\n'
    (root / 'annotation_val.odgt').write_bytes(good.encode() + b'{"ID": "\xff"}\n')
    with pytest.raises(OdgtError, match='line 2: byte 0xff at column 9 is not UTF-8'):
        _build(root, 'annotation_val.odgt')
    _write(root, [good, '{"ID": "x", "gtboxes": [], "n": ' + '9' * 5000 + '}\n'])
    with pytest.raises(OdgtError, match='line 2: invalid JSON'):
        _build(root, 'annotation_val.odgt')
    _write(root, [good, '{"ID": "x", "gtboxes": [], "n": ' + '[' * 10000 + ']' * 10000 + '}\n'])
    with pytest.raises(OdgtError, match=r'line 2: invalid JSON \(nested too deeply\)'):
        _build(root, 'annotation_val.odgt')


@pytest.mark.parametrize('cache, expect', [
    ('{not json', 'is not valid JSON'),
    ('[1, 2]', 'expected an object'),
    ('{"%s": [10]}', 'expected two positive integers'),
    ('{"%s": ["a", 3]}', 'expected two positive integers'),
])
def test_corrupt_size_cache_is_named(root, cache, expect):
    root, ids = root
    (root / 'id_hw_val.json').write_text(cache.replace('%s', ids[0]))
    msg = _error(root, [dict(ID=ids[0], gtboxes=[])])
    assert 'id_hw_val.json' in msg and expect in msg


def test_image_size_is_checked_against_the_cache_before_decoding(root):
    import cv2
    import numpy as np
    root, ids = root
    ann = _write(root, [dict(ID=ids[0], gtboxes=[_person()])])
    ds = StrictCrowdHumanDataset(data_root=str(root), ann_file=ann,
                                 data_prefix=dict(img='Images/'),
                                 pipeline=[dict(type='LoadImageFromFile')], test_mode=True)
    h, w = ds.get_data_info(0)['height'], ds.get_data_info(0)['width']
    assert ds[0]['img'].shape[:2] == (h, w)
    # the image is replaced after the cache was written: a different size is an error
    cv2.imwrite(str(root / 'Images' / f'{ids[0]}.jpg'), np.zeros((h + 7, w, 3), np.uint8))
    with pytest.raises(OdgtError, match=f'is {w}x{h + 7}, but the dataset has {w}x{h}'):
        ds[0]


def test_decompression_bomb_is_refused_before_decoding(root):
    from PIL import Image
    root, ids = root
    Image.new('L', (6000, 5000)).save(root / 'Images' / f'{ids[0]}.jpg')  # 30 MP, small file
    msg = _error(root, [dict(ID=ids[0], gtboxes=[])], max_image_pixels=10 ** 7)
    assert 'is 6000x5000 = 30000000 pixels' in msg and 'max_image_pixels=10000000' in msg
