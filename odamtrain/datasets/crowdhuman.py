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


# PIL's own decompression-bomb limit (it warns above it and refuses twice as much)
MAX_IMAGE_PIXELS = 89_478_485


def read_image_size(path: str, where: str, max_pixels: int = MAX_IMAGE_PIXELS
                    ) -> tuple[int, int]:
    """(height, width) of an image from its header (nothing is decoded); :class:`OdgtError`
    if it is unreadable or has more than ``max_pixels`` pixels (a decompression bomb: a
    small file that decodes to gigabytes)."""
    if not osp.isfile(path):
        raise OdgtError(f'{where}: image {path} not found; expected <data_root>/Images/<ID>.jpg')
    try:
        with Image.open(path) as im:
            width, height = im.size
    except Image.DecompressionBombError:
        raise OdgtError(f'{where}: image {path} declares more than twice PIL\'s pixel limit; '
                        f'expected at most {max_pixels} pixels') from None
    except Exception as e:  # PIL raises several types for broken files
        raise OdgtError(f'{where}: image {path} cannot be read ({e}); expected a JPEG '
                        'image') from None
    if width * height > max_pixels:
        raise OdgtError(f'{where}: image {path} is {width}x{height} = {width * height} pixels; '
                        f'expected at most max_image_pixels={max_pixels} (a larger image can '
                        'be a decompression bomb; raise the limit if it is genuine)')
    return height, width


def read_size_cache(path: str) -> dict:
    """The ``id_hw_*.json`` cache: {ID: [height, width]}; :class:`OdgtError` naming the file,
    the ID and the field where it is corrupt."""
    try:
        with open(path, encoding='utf-8') as f:
            cache = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise OdgtError(f'image size cache {path} is not valid JSON ({e}); delete it and it '
                        'is rebuilt from the images') from None
    if not isinstance(cache, dict):
        raise OdgtError(f'image size cache {path}: expected an object {{ID: [height, width]}}, '
                        f'got {type(cache).__name__}; delete it and it is rebuilt')
    for image_id, hw in cache.items():
        if (not isinstance(hw, list) or len(hw) != 2
                or not all(type(v) is int and 0 < v < 2 ** 31 for v in hw)):
            raise OdgtError(f'image size cache {path} (ID {image_id!r}): field [height, width] '
                            f'is {str(hw)[:80]}; expected two positive integers; delete the '
                            'cache and it is rebuilt')
    return cache


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
    * ``vbox``/``hbox`` may be missing (they default to ``fbox``);
    * IDs that are paths (``../x``) are refused; each image's real size (its header) is
      checked against the size cache when it is loaded, and images larger than
      ``max_image_pixels`` are refused before they are decoded.

    Args:
        data_root (str): the dataset folder (``Images/`` and the annotation files).
        ann_file (str): the ``.odgt`` file, relative to ``data_root``.
        extra_ann_file (str, optional): the image-size cache (default
            ``id_hw_<ann file stem>.json`` in ``data_root``; written when missing).
        strict (bool): raise on a box that is degenerate or outside the image (default);
            ``False`` drops such boxes with a warning that names them.
        max_image_pixels (int): refuse images with more pixels (default PIL's limit).
        **kwargs: mmdet's ``CrowdHumanDataset`` / ``BaseDetDataset`` arguments
            (``pipeline``, ``filter_cfg``, ``test_mode``, ...).

    Raises:
        OdgtError: a bad line, box or image, naming the file, line, ID and field.
    """

    def __init__(self, data_root: str, ann_file: str, extra_ann_file: str | None = None,
                 strict: bool = True, max_image_pixels: int = MAX_IMAGE_PIXELS, **kwargs):
        self.strict = strict
        self.max_image_pixels = max_image_pixels
        stem = osp.splitext(osp.basename(ann_file))[0].replace('annotation_', '')
        self.extra_ann_file = extra_ann_file or osp.join(data_root, f'id_hw_{stem}.json')
        self.extra_anns = {}
        if osp.isfile(self.extra_ann_file):
            self.extra_anns = read_size_cache(self.extra_ann_file)
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
                self.extra_anns[record['ID']] = list(read_image_size(img_path, where,
                                                                     self.max_image_pixels))
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
        kept = [d for d in self.data_list
                if min(d['width'], d['height']) >= min_size
                and not (empty and all(i['ignore_flag'] for i in d['instances']))]
        if len(kept) < len(self.data_list):
            print_log(f'{self.ann_file}: filter_cfg dropped {len(self.data_list) - len(kept)} '
                      f'of {len(self.data_list)} images (no usable person box or smaller '
                      f'than min_size={min_size})', logger='current')
        return kept

    def prepare_data(self, idx: int):
        """Like the parent, after checking the image's header against the size the dataset
        has for it (the cache) and against ``max_image_pixels``, before it is decoded; an
        image that fails to load names itself in the error."""
        info = self.get_data_info(idx)
        where = f'{self.ann_file} (ID {info["img_id"]!r})'
        hw = read_image_size(info['img_path'], where, self.max_image_pixels)
        if hw != (info['height'], info['width']):
            raise OdgtError(f'{where}: image {info["img_path"]} is {hw[1]}x{hw[0]}, but the '
                            f'dataset has {info["width"]}x{info["height"]} for it (from '
                            f'{self.extra_ann_file}); delete that cache and it is rebuilt')
        try:
            return super().prepare_data(idx)
        except Exception as e:
            raise OdgtError(f'{where}: loading image {info["img_path"]} failed: {e}') from e
