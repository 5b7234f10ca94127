"""CrowdHuman dataset: mmdet's ``CrowdHumanDataset`` with validated input and its bugs fixed."""
from __future__ import annotations

import json
import os.path as osp

from mmdet.datasets import BaseDetDataset, CrowdHumanDataset
from mmdet.registry import DATASETS
from mmengine.dist import get_rank
from mmengine.logging import print_log
from PIL import Image

from odamtrain.utils.fileio import atomic_write_text

from .odgt import OdgtError, check_box_in_image, read_odgt

__all__ = ['StrictCrowdHumanDataset']


def read_image_size(path: str, where: str) -> tuple[int, int]:
    """(height, width) of an image from its header; :class:`OdgtError` if unreadable."""
    if not osp.isfile(path):
        raise OdgtError(f'{where}: image {path} not found; expected <data_root>/Images/<ID>.jpg')
    try:
        with Image.open(path) as im:
            width, height = im.size
    except Exception as e:  # PIL raises several types for broken files
        raise OdgtError(f'{where}: image {path} cannot be read ({e}); expected a JPEG '
                        'image') from None
    return height, width


@DATASETS.register_module()
class StrictCrowdHumanDataset(CrowdHumanDataset):
    """CrowdHuman in its original layout: ``data_root/{annotation_*.odgt, Images/<ID>.jpg}``.

    Differences to mmdet 3.3's ``CrowdHumanDataset``:

    * every line and box is validated (:mod:`odamtrain.datasets.odgt`); a bad line, box or
      image raises :class:`OdgtError` naming the file, line, ID and field;
    * annotation files whose name contains neither ``train`` nor ``val`` work (the image-size
      cache is ``id_hw_<ann file stem>.json``); a cache that lacks an ID is completed;
    * ``filter_cfg=dict(filter_empty_gt=True, min_size=...)`` is honoured (mmdet ignores it
      for CrowdHuman), so training skips images without a usable person box;
    * ``vbox``/``hbox`` may be missing (they default to ``fbox``).

    Args:
        strict (bool): raise on a box that is degenerate or outside the image (default);
            ``False`` drops such boxes with a warning that names them.
    """

    def __init__(self, data_root: str, ann_file: str, extra_ann_file: str | None = None,
                 strict: bool = True, **kwargs):
        self.strict = strict
        stem = osp.splitext(osp.basename(ann_file))[0].replace('annotation_', '')
        self.extra_ann_file = extra_ann_file or osp.join(data_root, f'id_hw_{stem}.json')
        self.extra_anns = {}
        if osp.isfile(self.extra_ann_file):
            with open(self.extra_ann_file) as f:
                self.extra_anns = json.load(f)
        # Skip CrowdHumanDataset.__init__ (it crashes on such ann file names) and use ours.
        BaseDetDataset.__init__(self, data_root=data_root, ann_file=ann_file, **kwargs)

    def load_data_list(self) -> list[dict]:
        # checked here, not in __init__: mmdet's init_detector builds the dataset lazily only
        # for its metainfo, also where no data is present
        if not osp.isdir(self.data_root):
            raise OdgtError(f'data_root {self.data_root!r} does not exist; expected a CrowdHuman '
                            'folder with annotation_train.odgt, annotation_val.odgt and Images/')
        records = read_odgt(self.ann_file)
        n_cached = len(self.extra_anns)
        data_list = []
        for record in records:
            where = f'{self.ann_file}, line {record["_lineno"]} (ID {record["ID"]!r})'
            img_path = osp.join(self.data_prefix['img'], f'{record["ID"]}.jpg')
            if record['ID'] in self.extra_anns:
                if not osp.isfile(img_path):
                    raise OdgtError(f'{where}: image {img_path} not found; expected '
                                    '<data_root>/Images/<ID>.jpg')
            else:
                self.extra_anns[record['ID']] = read_image_size(img_path, where)
            height, width = self.extra_anns[record['ID']]
            record['gtboxes'] = [b for i, b in enumerate(record['gtboxes'])
                                 if self._box_ok(b, height, width, f'{where} gtboxes[{i}]')]
            self.extra_ann_exist = True  # sizes come from self.extra_anns in the parent
            data_list.append(self.parse_data_info(record))
        if len(self.extra_anns) > n_cached and get_rank() == 0:
            atomic_write_text(json.dumps(self.extra_anns), self.extra_ann_file)
        del self.extra_anns
        return data_list

    def _box_ok(self, box: dict, height: int, width: int, where: str) -> bool:
        try:
            check_box_in_image(box, height, width, where)
        except OdgtError as e:
            if self.strict:
                raise
            print_log(f'skipping box: {e}', logger='current', level=30)
            return False
        return True

    def filter_data(self) -> list[dict]:
        """Drop images without a usable (non-ignored) person or smaller than ``min_size``
        when ``filter_cfg`` asks for it (never in test mode)."""
        if self.test_mode or not self.filter_cfg:
            return self.data_list
        min_size = self.filter_cfg.get('min_size', 0)
        empty = self.filter_cfg.get('filter_empty_gt', False)
        return [d for d in self.data_list
                if min(d['width'], d['height']) >= min_size
                and not (empty and all(i['ignore_flag'] for i in d['instances']))]

    def prepare_data(self, idx: int):
        """Like the parent; an image that fails to load names itself in the error."""
        try:
            return super().prepare_data(idx)
        except Exception as e:
            info = self.get_data_info(idx)
            raise OdgtError(f'{self.ann_file} (ID {info["img_id"]!r}): loading image '
                            f'{info["img_path"]} failed: {e}') from e
