"""Reading and validating CrowdHuman ``.odgt`` annotation files.

An ``.odgt`` file holds one JSON object per line: ``{"ID": str, "gtboxes": [{"tag":
"person" | "mask", "fbox": [x, y, w, h], "vbox": [...], "hbox": [...], "extra": {"ignore":
0 | 1}, "head_attr": {...}}, ...]}``, the values of the CrowdHuman toolkit; anything else
(a tag ``'Person'``, ``"ignore": "0"``, an ID that is a path) is an error, never a silently
ignored person. Every error names the file, the line, the image ID and the field, and says
what was expected.
"""
from __future__ import annotations

import json
import math
import os.path as osp

import numpy as np

__all__ = ['OdgtError', 'read_odgt', 'check_record', 'check_box_in_image', 'check_image_id']

TAGS = ('person', 'mask')  # CrowdHuman's: a person box, or a region to ignore


class OdgtError(ValueError):
    """A CrowdHuman annotation or data folder that does not match the expected format."""


def _where(path: str, lineno: int, image_id=None) -> str:
    where = f'{path}, line {lineno}'
    return where + (f' (ID {image_id!r})' if image_id is not None else '')


def _is_coordinate(v) -> bool:
    """A finite JSON number that fits a float (a 400-digit integer does not)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + '...'


def _check_xywh(value, field: str, where: str, positive: bool) -> list:
    """``[x, y, w, h]`` checked as mmdet stores it: corners ``x + w``, ``y + h`` in float32,
    finite, and the width and height in float32 > 0 (``positive``) or >= 0."""
    if (not isinstance(value, (list, tuple)) or len(value) != 4
            or not all(_is_coordinate(v) for v in value)):
        raise OdgtError(f'{where}: field {field!r} is {_short(value)}; expected [x, y, w, h], '
                        'four finite numbers')
    x, y, w, h = (float(v) for v in value)
    with np.errstate(over='ignore'):
        corners = np.array([x, y, x + w, y + h], dtype=np.float32)
    if not np.isfinite(corners).all():
        raise OdgtError(f'{where}: field {field!r} = {list(value)} overflows float32 (corners '
                        f'{corners.tolist()}); expected coordinates below 3.4e38')
    size = corners[2:] - corners[:2]
    if positive and not (size > 0).all():
        raise OdgtError(f'{where}: field {field!r} = {list(value)} has width {w} and height '
                        f'{h}, {size[0]} and {size[1]} in float32; expected both > 0')
    if (size < 0).any():
        raise OdgtError(f'{where}: field {field!r} = {list(value)} has a negative size; '
                        'expected w >= 0 and h >= 0')
    return list(value)


def check_record(record, path: str, lineno: int) -> dict:
    """Validate one parsed ``.odgt`` line; returns it with ``vbox``/``hbox`` defaulting to
    ``fbox`` where missing. Raises :class:`OdgtError`."""
    if not isinstance(record, dict):
        raise OdgtError(f'{_where(path, lineno)}: expected a JSON object, got '
                        f'{type(record).__name__}')
    image_id = check_image_id(record.get('ID'), _where(path, lineno))
    boxes = record.get('gtboxes')
    if not isinstance(boxes, list):
        raise OdgtError(f'{_where(path, lineno, image_id)}: field \'gtboxes\' is '
                        f'{boxes!r}; expected a list (possibly empty)')
    for i, box in enumerate(boxes):
        where = f'{_where(path, lineno, image_id)} gtboxes[{i}]'
        if not isinstance(box, dict):
            raise OdgtError(f'{where}: expected a JSON object, got {type(box).__name__}')
        if box.get('tag') not in TAGS:
            raise OdgtError(f"{where}: field 'tag' is {_short(box.get('tag'))}; expected "
                            "'person' or 'mask' (lower case, as the CrowdHuman toolkit)")
        if 'fbox' not in box:
            raise OdgtError(f"{where}: field 'fbox' is missing; expected [x, y, w, h]")
        box['fbox'] = _check_xywh(box['fbox'], 'fbox', where, positive=True)
        for key in ('vbox', 'hbox'):
            box[key] = (_check_xywh(box[key], key, where, positive=False)
                        if key in box else list(box['fbox']))
        for key in ('extra', 'head_attr'):
            if key in box and not isinstance(box[key], dict):
                raise OdgtError(f'{where}: field {key!r} is {_short(box[key])}; expected an '
                                'object such as {"ignore": 0}')
        ignore = box.get('extra', {}).get('ignore', 0)
        if type(ignore) not in (int, bool) or ignore not in (0, 1):
            raise OdgtError(f"{where}: field 'extra.ignore' is {_short(ignore)}; expected 0 or "
                            '1 (a JSON number or boolean)')
    return record


def check_image_id(image_id, where: str) -> str:
    """An ``ID`` names ``Images/<ID>.jpg``: a non-empty string that is not a path (no
    separators, not '.' or '..', no NUL), so it can never read outside the images folder."""
    if not isinstance(image_id, str) or not image_id:
        raise OdgtError(f"{where}: field 'ID' is {_short(image_id)}; expected a non-empty "
                        'string (the image is Images/<ID>.jpg)')
    if ('/' in image_id or '\\' in image_id or '\x00' in image_id
            or image_id in ('.', '..') or osp.isabs(image_id)):
        raise OdgtError(f"{where}: field 'ID' is {_short(image_id)}; expected a file name "
                        'without path separators (the image is Images/<ID>.jpg)')
    return image_id


def check_box_in_image(box: dict, height: int, width: int, where: str) -> None:
    """Raise :class:`OdgtError` if the ``fbox`` of ``box`` does not overlap the image.

    CrowdHuman's full boxes may extend past the border (a person cut by the frame), but a
    box with no pixel inside the image is an annotation error.
    """
    x, y, w, h = box['fbox']
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        raise OdgtError(f"{where}: field 'fbox' = {box['fbox']} lies entirely outside the "
                        f'{width}x{height} image; expected a box that overlaps the image')


def read_odgt(path: str) -> list[dict]:
    """Read and validate an ``.odgt`` file. Blank lines are skipped.

    Args:
        path: the file.

    Returns:
        list[dict]: one record per image, with ``_lineno`` (1-based line in the file).

    Raises:
        OdgtError: naming the file, the line, the ID and the field of the first bad record.
    """
    if not osp.isfile(path):
        raise OdgtError(f'annotation file {path} not found; expected a CrowdHuman .odgt file '
                        '(one JSON object per line)')
    records, seen = [], {}
    with open(path, 'rb') as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode('utf-8')
            except UnicodeDecodeError as e:
                raise OdgtError(f'{_where(path, lineno)}: byte {raw[e.start]:#04x} at column '
                                f'{e.start + 1} is not UTF-8; expected UTF-8 JSON') from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise OdgtError(f'{_where(path, lineno)}: invalid JSON ({e.msg} at column '
                                f'{e.colno}); expected one JSON object per line') from None
            except (ValueError, RecursionError) as e:  # a 5000-digit integer, deep nesting
                cause = 'nested too deeply' if isinstance(e, RecursionError) else str(e)
                raise OdgtError(f'{_where(path, lineno)}: invalid JSON ({cause}); expected '
                                'one JSON object per line') from None
            record = check_record(record, path, lineno)
            if record['ID'] in seen:
                raise OdgtError(f'{_where(path, lineno, record["ID"])}: duplicate ID, first '
                                f'seen on line {seen[record["ID"]]}; expected unique IDs')
            seen[record['ID']] = lineno
            record['_lineno'] = lineno
            records.append(record)
    if not records:
        raise OdgtError(f'annotation file {path} is empty; expected one JSON object per line')
    return records
