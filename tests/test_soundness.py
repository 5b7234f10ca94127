"""A detector is explained exactly or refused by name, before any work; Odam is on however
the model is built; nothing the adapters change outside themselves outlives them.

The refused families are stock MMDetection 3.3 configs (random init, no download): each
differs from the code an adapter reproduces in one named method (a fused feature, a
rescoring, another decoding or selection), or has no box head at all."""
import pytest
import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.hub import get_config
from mmengine.registry import MODELS as MMENGINE_MODELS

import odamtrain.explain.adapters.dense as dense_module
from odamtrain.apis import (
    DetectionMismatchError,
    explain_batch,
    init_detector,
    verify_detections,
)
from odamtrain.explain import UnsupportedDetectorError, build_adapter
from odamtrain.explain.adapters import StandardRoIAdapter
from odamtrain.explain.adapters.roi import box_head_reads
from odamtrain.models import asks_for_odam

from .conftest import REPO
from .odam_fixtures import train_batch
from .zoo import (
    DENSE,
    DETR_ZOO,
    GROUNDING_ZOO,
    QUERY_RCNN,
    TWO_STAGE,
    build_zoo_detector,
    zoo_batch,
    zoo_config,
)

# (stock mmdet config, the class.method or words the refusal must name)
REFUSED = {
    'ga-retinanet': ('guided_anchoring/ga-retinanet_r50-caffe_fpn_1x_coco.py',
                     'GARetinaHead.predict_by_feat'),
    'solov2': ('solov2/solov2_r50_fpn_1x_coco.py',
               'SOLOv2: no box head or RoI head to explain (mask_head=SOLOV2Head)'),
    'mask2former': ('mask2former/mask2former_r50_8xb2-lsj-50e_coco.py',
                    'panoptic_head=Mask2FormerHead'),
}


def stock_detector(config: str):
    """A stock mmdet config's detector, random init (nothing downloaded), eval mode."""
    register_all_modules()
    cfg = get_config(f'mmdet::{config}')
    if 'init_cfg' in cfg.model.get('backbone', {}):
        cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model).eval()
    model.cfg = cfg
    return model


@pytest.mark.parametrize('name', sorted(REFUSED))
def test_refused_by_name_before_any_forward(name):
    config, words = REFUSED[name]
    model = stock_detector(config)
    calls = []
    handle = model.backbone.register_forward_pre_hook(lambda *args: calls.append(1))
    sample = DetDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64),
                                         pad_shape=(64, 64), batch_input_shape=(64, 64),
                                         scale_factor=(1.0, 1.0)))
    try:
        for method in ('odam', 'gradcam'):
            with pytest.raises(UnsupportedDetectorError) as e:
                explain_batch(model, torch.zeros(1, 3, 64, 64), [sample], method=method)
            assert words in str(e.value), str(e.value)
            assert 'FCOSHead' in str(e.value) and 'CascadeRoIHead' in str(e.value)
    finally:
        handle.remove()
    assert not calls


def test_subclass_overriding_one_step_is_refused():
    """A subclass of a covered RoI head that rescores in its own ``predict_bbox`` (the rest
    inherited) is refused by that method's name; so is one that changes the box head's
    decoding of a cascade stage."""
    model = build_zoo_detector('faster-rcnn')

    class RescoringRoIHead(type(model.roi_head)):
        def predict_bbox(self, *args, **kwargs):
            results = super().predict_bbox(*args, **kwargs)
            for r in results:
                r.scores = r.scores.sqrt()
            return results

    model.roi_head.__class__ = RescoringRoIHead
    with pytest.raises(UnsupportedDetectorError, match='RescoringRoIHead.predict_bbox'):
        build_adapter(model)
    cascade = build_zoo_detector('cascade-rcnn')

    class OtherRegression(type(cascade.roi_head.bbox_head[1])):
        def regress_by_class(self, *args, **kwargs):
            return super().regress_by_class(*args, **kwargs)

    cascade.roi_head.bbox_head[1].__class__ = OtherRegression
    with pytest.raises(UnsupportedDetectorError, match='OtherRegression.regress_by_class'):
        build_adapter(cascade)


@pytest.mark.parametrize('name', DENSE + TWO_STAGE + QUERY_RCNN + list(DETR_ZOO)
                         + list(GROUNDING_ZOO))
def test_every_covered_family_passes_the_self_check(name):
    """The explained detections are ``model.predict``'s (boxes, labels, scores), for a score
    and a box-side target; a model built by the registry from the zoo config."""
    model = build_zoo_detector(name)
    inputs, samples = zoo_batch(model)
    for target in ('score', 'y2'):
        if build_adapter(model).target_support(target) is not None:  # PAA's voted boxes
            with pytest.raises(UnsupportedDetectorError, match='score-voted'):
                explain_batch(model, inputs, samples, target=target, verify=True)
            continue
        det, = explain_batch(model, inputs, samples, target=target, verify=True)
        assert len(det) > 0 and det.heatmaps.shape[0] == len(det)


def test_self_check_names_a_detector_whose_detections_differ(monkeypatch):
    model = build_zoo_detector('faster-rcnn')
    inputs, samples = zoo_batch(model)
    adapter = build_adapter(model)
    det = adapter.predictions(adapter.forward(inputs, samples))
    verify_detections(model, inputs, samples, det)  # its own: no error
    moved = [d.clone() for d in det]
    moved[0].bboxes = moved[0].bboxes + 0.5
    with pytest.raises(DetectionMismatchError, match='FasterRCNN.*bboxes up to 0.5'):
        verify_detections(model, inputs, samples, moved)
    fewer = [d[:-1] for d in det]
    with pytest.raises(DetectionMismatchError, match=f'{len(det[0]) - 1} detections'):
        verify_detections(model, inputs, samples, fewer)
    # an adapter that reproduced the post-processing wrongly is caught before any map
    original = StandardRoIAdapter.predictions
    monkeypatch.setattr(StandardRoIAdapter, 'predictions',
                        lambda self, fwd, cfg=None: [d[1:] for d in original(self, fwd, cfg)])
    with pytest.raises(DetectionMismatchError):
        explain_batch(model, inputs, samples, verify=True)


# ------------------------------------------------------------------ build paths
ODAM_CONFIGS = ['configs/fcos_odam_tiny_fpn_synthetic.py',
                'configs/faster-rcnn_odam_tiny_fpn_synthetic.py']


def _config(path):
    register_all_modules()
    return Config.fromfile(f'{REPO}/{path}')


@pytest.mark.parametrize('config', ODAM_CONFIGS)
@pytest.mark.parametrize('registry', ['mmdet', 'mmengine'])
def test_the_registry_builds_what_trains_with_odam(config, registry):
    """``MODELS.build(cfg.model)`` (mmdet's registry, or mmengine's root as mmengine's Runner
    builds) of a config asking for Odam-Train: a training step has its losses."""
    cfg = _config(config)
    build = (MODELS.build if registry == 'mmdet'
             else lambda c: MMENGINE_MODELS.build(dict(c, _scope_='mmdet')))
    model = build(cfg.model).train()
    model.cfg = cfg  # (the training pipeline of the batch below)
    assert 'odam_loss' in asks_for_odam(model)
    head = model.roi_head if hasattr(model, 'roi_head') else model.bbox_head
    assert type(head).__name__.startswith('Odam')
    inputs, samples = train_batch(model)
    torch.manual_seed(0)
    losses = model.loss(inputs, samples)
    assert {'loss_odam_con', 'loss_odam_sep'} <= set(losses)
    assert torch.isfinite(losses['loss_odam_con'] + losses['loss_odam_sep'])


def test_mmengine_runner_with_custom_imports_trains_with_odam(tmp_path):
    """mmengine's own Runner (a config that does not name OdamRunner) builds the model
    through the registry: Odam-Train is on."""
    from mmengine.runner import Runner
    cfg = _config(ODAM_CONFIGS[0])
    cfg.pop('runner_type')
    cfg.work_dir = str(tmp_path)
    runner = Runner.from_cfg(cfg)
    assert type(runner).__name__ == 'Runner'
    assert type(runner.model.bbox_head).__name__ == 'OdamFCOSHead'
    assert runner.model.bbox_head.odam_loss is not None


def test_init_detector_runs_odam_nms():
    cfg = _config('configs/fcos_tiny_fpn_synthetic.py')
    cfg.model.test_cfg.nms = dict(type='odam_nms', iou_threshold=0.6)
    model = init_detector(cfg, device='cpu')
    assert asks_for_odam(model) == ['odam_nms']
    assert type(model.bbox_head).__name__ == 'OdamFCOSHead'


@pytest.mark.parametrize('name', ['solov2', 'mask2former'])
def test_detectors_without_odam_build_and_predict_as_in_mmdet(name, tmp_path):
    """Detectors that ask for no Odam build through odamtrain's registry, its runner and
    ``init_detector``, and predict, untouched."""
    from odamtrain.engine import OdamRunner
    config, _ = REFUSED[name]
    cfg = get_config(f'mmdet::{config}')
    cfg.model.backbone.init_cfg = None
    model = init_detector(cfg, device='cpu')
    assert not asks_for_odam(model)
    assert not any(type(m).__name__.startswith('Odam') for m in model.modules())
    sample = DetDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64),
                                         pad_shape=(64, 64), batch_input_shape=(64, 64),
                                         scale_factor=(1.0, 1.0)))
    with torch.no_grad():
        result, = model.predict(torch.zeros(1, 3, 64, 64), [sample])
    assert 'pred_instances' in result or 'pred_panoptic_seg' in result
    cfg.work_dir = str(tmp_path)
    runner = OdamRunner(model=cfg.model, work_dir=str(tmp_path), default_scope='mmdet')
    assert type(runner.model).__name__ == type(model).__name__


def test_a_detr_asking_for_odam_is_refused_when_built():
    register_all_modules()
    cfg = get_config('mmdet::detr/detr_r50_8xb2-150e_coco.py')
    cfg.model.backbone.init_cfg = None
    cfg.model.train_cfg.odam_loss = dict()
    with pytest.raises(ValueError, match='DETR with DETRHead asks for odam_loss.*set '
                                         'predictions'):
        MODELS.build(cfg.model)


# --------------------------------------------------------------- nothing leaks
def test_provenance_restores_mmdet_after_an_error():
    model = build_zoo_detector('fcos')
    adapter = build_adapter(model)
    module = dense_module.sys.modules[type(model.bbox_head)._predict_by_feat_single.__module__]
    original = module.filter_scores_and_topk
    with pytest.raises(RuntimeError, match='inside'):
        with adapter.provenance():
            assert module.filter_scores_and_topk is not original
            raise RuntimeError('inside')
    assert module.filter_scores_and_topk is original
    assert '_bbox_post_process' not in vars(model.bbox_head)


def test_detr_capture_restores_the_head_after_an_error():
    model = build_zoo_detector('detr')
    adapter = build_adapter(model)
    with pytest.raises(RuntimeError, match='inside'):
        with adapter._captured_outputs({}):
            assert 'predict_by_feat' in vars(model.bbox_head)
            raise RuntimeError('inside')
    assert 'predict_by_feat' not in vars(model.bbox_head)


def test_box_head_reads_restores_the_box_head_after_an_error():
    model = build_zoo_detector('faster-rcnn')
    bbox_head = model.roi_head.bbox_head
    with pytest.raises(RuntimeError, match='inside'):
        with box_head_reads(bbox_head, leaf=True) as reads:
            assert len(bbox_head._forward_pre_hooks) == 1
            bbox_head(torch.zeros(2, 32, 7, 7))
            assert len(reads) == 1 and reads[0].is_leaf and reads[0].requires_grad
            raise RuntimeError('inside')
    assert not bbox_head._forward_pre_hooks


@pytest.mark.parametrize('name', ['htc', 'scnet'])
def test_odam_train_on_htc_and_scnet_is_refused_when_built(name):
    """Their ``_bbox_forward`` returns no RoI features for the training maps: asking for
    Odam-Train is an error naming the head; Odam-NMS alone builds."""
    cfg = zoo_config(name)
    cfg.model.train_cfg.odam_loss = {}
    head = type(build_zoo_detector(name).roi_head).__name__
    with pytest.raises(ValueError,
                       match=f'odam_loss: .*{head}._bbox_forward does not return the RoI'):
        init_detector(cfg, device='cpu')
