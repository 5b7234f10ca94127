"""The crowd peer: mmdet's CrowdDet (two instances per proposal, EMD loss, Set-NMS) on the
tiny backbone, with mmcv's RoIAlign in place of torchvision's."""
import json
import math

import pytest
import torch
from mmdet.registry import DATASETS, MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.dataset import pseudo_collate

from .conftest import run_tool

CONFIG = 'configs/crowddet_tiny_fpn_synthetic.py'


def _config(root):
    cfg = Config.fromfile(CONFIG)
    for loader in (cfg.train_dataloader, cfg.test_dataloader):
        loader.dataset.data_root = root
    return cfg


def test_tiny_crowddet_is_the_tiny_faster_rcnn_but_its_head(synthetic_root):
    register_all_modules()
    cfg, faster = _config(synthetic_root), Config.fromfile(
        'configs/faster-rcnn_tiny_fpn_synthetic.py')
    # FPN's default upsampling (nearest), which CrowdDet's config changes to bilinear
    assert cfg.model.neck.pop('upsample_cfg') == dict(mode='nearest')
    for part in ('backbone', 'neck'):
        assert cfg.model[part] == faster.model[part], part
    assert cfg.model.rpn_head.anchor_generator.strides == \
        faster.model.rpn_head.anchor_generator.strides
    assert cfg.train_dataloader.dataset.pipeline == faster.train_dataloader.dataset.pipeline
    assert cfg.param_scheduler == faster.param_scheduler
    model = MODELS.build(Config.fromfile(CONFIG).model)
    layer = model.roi_head.bbox_roi_extractor.roi_layers[0]
    assert type(layer).__module__.startswith('mmcv.ops') and not layer.use_torchvision
    assert model.roi_head.bbox_head.num_instance == 2


def test_tiny_crowddet_learns_a_fixed_batch(synthetic_root):
    """A few SGD steps on one batch lower its RPN + EMD loss (the head trains on CPU)."""
    register_all_modules()
    torch.manual_seed(0)
    cfg = _config(synthetic_root)
    model = MODELS.build(cfg.model)
    model.init_weights()
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    batch = model.data_preprocessor(pseudo_collate([dataset[i] for i in range(2)]), True)
    optim = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def total():
        losses = model(**batch, mode='loss')
        return sum(sum(v) if isinstance(v, list) else v for v in losses.values())
    first = None
    for _ in range(8):
        loss = total()
        first = float(loss) if first is None else first
        optim.zero_grad()
        loss.backward()
        optim.step()
    with torch.no_grad():
        last = float(total())
    assert math.isfinite(last) and last < 0.8 * first, (first, last)


@pytest.mark.slow
def test_compare_nms_reports_crowddet_set_nms_as_tools_test_does(synthetic_root, tmp_path):
    from .test_train_test_e2e import _ok, data_options
    work = tmp_path / 'work'
    _ok(run_tool('tools/train.py', CONFIG, '--work-dir', str(work), '--cfg-options',
                 *data_options(synthetic_root), 'train_cfg.max_epochs=1',
                 'train_cfg.val_interval=1'))
    table = tmp_path / 'table.json'
    _ok(run_tool('tools/compare_nms.py', CONFIG, str(work / 'epoch_1.pth'), '--work-dir',
                 str(tmp_path / 'compare'), '--out', str(table), '--sweep', '--cfg-options',
                 *data_options(synthetic_root)))
    rows = json.loads(table.read_text())
    assert [r['method'] for r in rows] == ['Set-NMS']  # no Soft-/Odam-NMS, no sweep
    out = _ok(run_tool('tools/test.py', CONFIG, str(work / 'epoch_1.pth'), '--work-dir',
                       str(tmp_path / 'test'), '--cfg-options', *data_options(synthetic_root)))
    printed = {line.split()[0]: float(line.split()[1]) for line in out.splitlines()
               if line.split()[:1] in (['AP50'], ['JI'])}
    assert printed['AP50'] == pytest.approx(rows[0]['AP50'], abs=1e-4)
    assert printed['JI'] == pytest.approx(rows[0]['JI'], abs=1e-4)
