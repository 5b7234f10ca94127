"""Synthetic CrowdHuman: crowd scenes of person-like figures in the real ``.odgt`` layout.

Each scene is a cluttered background with figures (head, torso, arms, legs; varied colours,
textures, poses, aspect ratios and scales) drawn back to front, so that nearer figures occlude
farther ones. People stand in small groups whose members overlap heavily (IoU > 0.5 between
full boxes), which makes a good part of the boxes a crowd set that greedy NMS at IoU 0.5
cannot keep apart. Per figure the annotation holds

* ``fbox``: the full extent of the figure, also where it is occluded or outside the image;
* ``vbox``: the bounding box of its visible pixels;
* ``hbox``: its head;

all as ``[x, y, w, h]`` in pixels. Distant crowds are drawn as tiny figures inside a
``tag='mask'`` region with ``extra.ignore = 1`` (CrowdHuman's ignore regions).

Everything is drawn with a ``numpy.random.Generator`` seeded per image, so the same
``(seed, split, index)`` always gives the same image and annotation.
"""
from __future__ import annotations

import json
import os
import os.path as osp
from dataclasses import dataclass, field

import cv2
import numpy as np

from odamtrain.utils.fileio import atomic_write_bytes, atomic_write_text

# Bump when the generator's output changes: folders written by an older version are redone.
GENERATOR_VERSION = 2

__all__ = ['GENERATOR_VERSION', 'SceneSpec', 'DENSITIES', 'render_scene',
           'make_synthetic_crowdhuman', 'crowd_statistics']


@dataclass
class SceneSpec:
    """Knobs of the scene generator (defaults give the embedded demo data).

    Attributes:
        height_range: (min, max) image height in pixels; width = 4/3 height.
        person_height_range: (min, max) person height / image height.
        groups_range: (min, max) overlapping groups per image.
        group_size_range: (min, max) people per group.
        singles_range: (min, max) isolated people per image.
        group_dx_range: (min, max) neighbour offset / person width inside a group.
        clutter_range: (min, max) background shapes.
        ignore_prob: probability of one ignore region (a distant crowd).
        jpeg_quality: of the written images.
        skin_tones: BGR colours the people's skin is drawn from.
    """
    height_range: tuple = (224, 288)
    person_height_range: tuple = (0.30, 0.70)
    groups_range: tuple = (1, 3)
    group_size_range: tuple = (2, 3)
    singles_range: tuple = (1, 3)
    group_dx_range: tuple = (0.12, 0.40)
    clutter_range: tuple = (12, 30)
    ignore_prob: float = 0.3
    jpeg_quality: int = 92
    skin_tones: tuple = field(default=((87, 120, 172), (110, 150, 205), (60, 85, 125),
                                       (140, 180, 225), (45, 65, 95)))


# Crowd densities for the val sets of the density study (training uses 'default'): from
# mostly isolated people to large groups of strongly overlapping ones.
DENSITIES = {
    'sparse': SceneSpec(groups_range=(0, 1), group_size_range=(2, 2), singles_range=(2, 4)),
    'default': SceneSpec(),
    'dense': SceneSpec(groups_range=(2, 3), group_size_range=(3, 4), singles_range=(0, 2)),
    'packed': SceneSpec(groups_range=(3, 4), group_size_range=(4, 5), singles_range=(0, 1),
                        group_dx_range=(0.10, 0.30)),
}


def _poly_box(polys: list[np.ndarray]) -> np.ndarray:
    """Tight [x1, y1, x2, y2] of a list of (K, 2) polygons."""
    pts = np.concatenate(polys, 0)
    return np.array([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()])


def _limb(p0, p1, width: float) -> np.ndarray:
    """Quadrilateral (4, 2) of a limb of ``width`` from point p0 to p1."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    n = np.array([-d[1], d[0]]) / (np.linalg.norm(d) + 1e-6) * width / 2
    return np.stack([p0 + n, p1 + n, p1 - n, p0 - n])


def _random_colour(rng: np.random.Generator, sat=(60, 255), val=(50, 240)) -> tuple:
    hsv = np.uint8([[[rng.integers(0, 180), rng.integers(*sat), rng.integers(*val)]]])
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def _person_parts(rng: np.random.Generator, cx: float, foot_y: float, h: float):
    """Geometry of one figure. Returns (parts, head_box): parts is a list of
    (kind, polygon (K, 2)) with kind in {'head', 'hair', 'torso', 'arm', 'leg'}."""
    r = h * rng.uniform(0.070, 0.090)  # head radius
    shoulder = h * rng.uniform(0.11, 0.16)  # half shoulder width
    lean = h * rng.uniform(-0.04, 0.04)
    top = foot_y - h
    head_c = np.array([cx + lean, top + r])
    neck_y = top + 2 * r
    hip_y = neck_y + h * rng.uniform(0.33, 0.38)
    hip_half = shoulder * rng.uniform(0.6, 0.85)
    stance = h * rng.uniform(0.0, 0.14)
    leg_w = h * rng.uniform(0.075, 0.10)
    arm_w = h * rng.uniform(0.05, 0.07)
    arm_len = h * rng.uniform(0.33, 0.40)

    angles = np.linspace(0, 2 * np.pi, 20, endpoint=False)
    head = head_c + r * np.stack([np.cos(angles), np.sin(angles) * 1.1], 1)
    hair = head_c + r * np.stack([np.cos(angles[10:]), np.sin(angles[10:]) * 1.15], 1)
    torso = np.array([[cx - shoulder, neck_y], [cx + shoulder, neck_y],
                      [cx + hip_half, hip_y], [cx - hip_half, hip_y]])
    parts = [('torso', torso)]
    for side in (-1, 1):
        ang = np.deg2rad(rng.uniform(-10, 70))  # 0 = hanging down, 90 = horizontal
        s = np.array([cx + side * (shoulder - arm_w / 2), neck_y + arm_w / 2])
        parts.append(('arm', _limb(s, s + arm_len * np.array([side * np.sin(ang), np.cos(ang)]),
                                   arm_w)))
        hip = np.array([cx + side * hip_half * 0.5, hip_y])
        foot = np.array([cx + side * (hip_half * 0.5 + stance * rng.uniform(0.5, 1.0)), foot_y])
        parts.append(('leg', _limb(hip, foot, leg_w)))
    parts += [('head', head), ('hair', hair)]
    head_box = np.array([head_c[0] - r, head_c[1] - 1.1 * r, head_c[0] + r, head_c[1] + 1.1 * r])
    return parts, head_box


def _draw_person(rng, spec: SceneSpec, img: np.ndarray, label: np.ndarray, idx: int,
                 parts) -> None:
    """Paint a figure into ``img`` and its id ``idx`` into the label map (in place)."""
    skin = spec.skin_tones[rng.integers(len(spec.skin_tones))]
    shirt, pants = _random_colour(rng), _random_colour(rng, val=(30, 200))
    hair = _random_colour(rng, sat=(0, 120), val=(10, 90))
    stripes = rng.random() < 0.35
    mask = np.zeros(label.shape, np.uint8)
    colours = dict(torso=shirt, arm=shirt if rng.random() < 0.5 else skin, leg=pants,
                   head=skin, hair=hair)
    for kind, poly in parts:
        if kind == 'hair' and rng.random() < 0.3:
            continue
        pts = np.round(poly).astype(np.int32)
        cv2.fillPoly(img, [pts], colours[kind], lineType=cv2.LINE_AA)
        cv2.fillPoly(mask, [pts], 1)
        if kind == 'torso' and stripes:
            tmask = np.zeros_like(mask)
            cv2.fillPoly(tmask, [pts], 1)
            y0, y1 = pts[:, 1].min(), pts[:, 1].max()
            step = max(3, int((y1 - y0) / rng.integers(3, 7)))
            dark = tuple(int(c * 0.45) for c in shirt)
            band = np.zeros_like(mask)
            for y in range(y0, y1, step):
                cv2.line(band, (0, y), (label.shape[1] - 1, y), 1, max(1, step // 3))
            img[(band > 0) & (tmask > 0)] = dark
    label[mask > 0] = idx


def _draw_clutter(rng, spec: SceneSpec, img: np.ndarray) -> None:
    h, w = img.shape[:2]
    for _ in range(rng.integers(*spec.clutter_range)):
        colour = _random_colour(rng, sat=(0, 255), val=(30, 255))
        kind = rng.integers(4)
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        s = int(rng.integers(6, max(8, h // 3)))
        if kind == 0:
            cv2.rectangle(img, (x, y), (x + s, y + int(s * rng.uniform(0.3, 3))), colour, -1)
        elif kind == 1:
            cv2.ellipse(img, (x, y), (s // 2, int(s * rng.uniform(0.2, 1.0))),
                        float(rng.uniform(0, 180)), 0, 360, colour, -1)
        elif kind == 2:
            cv2.line(img, (x, y), (int(rng.integers(0, w)), int(rng.integers(0, h))), colour,
                     int(rng.integers(1, 6)))
        else:
            pts = (np.array([x, y]) + rng.integers(-s, s + 1, (5, 2))).astype(np.int32)
            cv2.fillPoly(img, [pts], colour)


def _background(rng, h: int, w: int) -> np.ndarray:
    c0 = np.array(_random_colour(rng, sat=(0, 160)))
    c1 = np.array(_random_colour(rng, sat=(0, 160)))
    t = np.linspace(0, 1, h)[:, None, None]
    img = (c0 * (1 - t) + c1 * t) * np.ones((1, w, 1))
    noise = cv2.resize(rng.normal(0, 18, (h // 8 + 1, w // 8 + 1, 3)), (w, h))
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def _xywh(box) -> list:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [round(x1, 1), round(y1, 1), round(x2 - x1, 1), round(y2 - y1, 1)]


def render_scene(rng: np.random.Generator, spec: SceneSpec = SceneSpec()):
    """Draw one scene.

    Args:
        rng: the random generator (the scene is a function of its state).
        spec: the scene generator's knobs.

    Returns:
        tuple: ``(img, gtboxes)``: img (H, W, 3) uint8 BGR; gtboxes the CrowdHuman
        ``gtboxes`` entries (``tag``, ``fbox``, ``vbox``, ``hbox`` as [x, y, w, h] pixels,
        ``extra``, ``head_attr``).
    """
    h = int(rng.integers(spec.height_range[0], spec.height_range[1] + 1))
    w = int(round(h * 4 / 3))
    img = _background(rng, h, w)
    _draw_clutter(rng, spec, img)

    # People: (cx, foot_y, height). Groups overlap strongly, singles stand apart.
    people = []
    for _ in range(rng.integers(spec.groups_range[0], spec.groups_range[1] + 1)):
        ph = h * rng.uniform(*spec.person_height_range)
        cx = rng.uniform(0.05, 0.95) * w
        fy = rng.uniform(0.55, 1.1) * h
        for _ in range(rng.integers(spec.group_size_range[0], spec.group_size_range[1] + 1)):
            s = rng.uniform(0.9, 1.1)
            people.append((cx, fy + rng.uniform(-0.06, 0.06) * ph, ph * s))
            cx += rng.choice([-1, 1]) * rng.uniform(*spec.group_dx_range) * 0.4 * ph
    for _ in range(rng.integers(spec.singles_range[0], spec.singles_range[1] + 1)):
        ph = h * rng.uniform(*spec.person_height_range)
        people.append((rng.uniform(-0.02, 1.02) * w, rng.uniform(0.5, 1.1) * h, ph))

    gtboxes = []
    # Distant crowd (ignore region): tiny figures behind everybody else.
    if rng.random() < spec.ignore_prob:
        rw, rh = rng.uniform(0.2, 0.4) * w, rng.uniform(0.08, 0.15) * h
        rx, ry = rng.uniform(0, w - rw), rng.uniform(0.05, 0.4) * h
        tiny = np.zeros((h, w), np.int32)
        for _ in range(int(rw / (rh * 0.25))):
            parts, _ = _person_parts(rng, rng.uniform(rx, rx + rw), ry + rh,
                                     rh * rng.uniform(0.7, 1.0))
            _draw_person(rng, spec, img, tiny, 1, parts)
        box = [rx, ry, rx + rw, ry + rh]
        gtboxes.append(dict(tag='mask', fbox=_xywh(box), vbox=_xywh(box), hbox=_xywh(box),
                            extra=dict(ignore=1), head_attr=dict(ignore=1)))

    label = np.full((h, w), -1, np.int32)
    geoms = []
    for i, (cx, fy, ph) in enumerate(sorted(people, key=lambda p: p[1])):  # far (high) first
        parts, head_box = _person_parts(rng, cx, fy, ph)
        _draw_person(rng, spec, img, label, i, parts)
        geoms.append((_poly_box([p for _, p in parts]), head_box))

    for i, (fbox, hbox) in enumerate(geoms):
        ys, xs = np.nonzero(label == i)
        full = ((np.clip(fbox[2], 0, w) - np.clip(fbox[0], 0, w))
                * (np.clip(fbox[3], 0, h) - np.clip(fbox[1], 0, h)))
        if len(xs) < 0.05 * max(full, 1) or len(xs) < 30:
            continue  # (almost) invisible: not annotated, like an unlabelled person
        vbox = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)
        vbox[:2] = np.maximum(vbox[:2], fbox[:2])  # rasterisation may spill 1 px
        vbox[2:] = np.minimum(vbox[2:], fbox[2:])
        gtboxes.append(dict(tag='person', fbox=_xywh(fbox), vbox=_xywh(vbox), hbox=_xywh(hbox),
                            extra=dict(ignore=0), head_attr=dict(ignore=0)))

    img = cv2.GaussianBlur(img, (3, 3), 0.6)
    img = np.clip(img.astype(np.int16) + rng.integers(-6, 7, img.shape), 0, 255).astype(np.uint8)
    return img, gtboxes


def _iou_matrix(boxes: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) x1y1x2y2 boxes -> (N, N)."""
    lt = np.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = (boxes[:, 2:] - boxes[:, :2]).prod(-1)
    return inter / (area[:, None] + area[None, :] - inter)


def crowd_statistics(records: list[dict]) -> dict:
    """Crowd statistics of CrowdHuman records (non-ignored ``person`` fboxes).

    Args:
        records: CrowdHuman records (``gtboxes`` with ``tag`` and ``fbox`` [x, y, w, h]).

    Returns:
        dict: ``images``, ``persons``, ``persons_per_image``, ``crowd_fraction`` (boxes
        with IoU > 0.5 to another box of the image, paper A.4.2), ``pairs_iou_gt_0_3`` /
        ``_0_5`` / ``_0_7`` (box pairs above each IoU), ``mean_vbox_fbox_area_ratio``,
        ``ignore_regions`` and ``nms_oracle_recall`` (recall of greedy NMS at IoU 0.5 run on
        the GT boxes themselves, visible part as score: the best recall any detector with
        plain NMS can reach).
    """
    n_box = n_crowd = n_pairs = 0
    pair_hist = np.zeros(3, int)  # pairs with IoU > 0.3, > 0.5, > 0.7
    kept = 0
    vis = []
    n_ignore = 0
    for rec in records:
        boxes, score = [], []
        for g in rec['gtboxes']:
            if g['tag'] != 'person' or g.get('extra', {}).get('ignore', 0):
                n_ignore += 1
                continue
            x, y, bw, bh = g['fbox']
            boxes.append([x, y, x + bw, y + bh])
            vw, vh = g['vbox'][2:]
            score.append(vw * vh / (bw * bh))
        n_box += len(boxes)
        vis += score
        if not boxes:
            continue
        boxes = np.asarray(boxes, float)
        iou = _iou_matrix(boxes)
        np.fill_diagonal(iou, 0)
        n_crowd += int((iou.max(1) > 0.5).sum())
        upper = iou[np.triu_indices(len(boxes), 1)]
        n_pairs += len(upper)
        pair_hist += [(upper > t).sum() for t in (0.3, 0.5, 0.7)]
        suppressed = np.zeros(len(boxes), bool)
        for i in np.argsort(-np.asarray(score), kind='stable'):
            if not suppressed[i]:
                kept += 1
                suppressed |= iou[i] > 0.5
    return dict(images=len(records), persons=n_box,
                persons_per_image=n_box / max(len(records), 1),
                crowd_fraction=n_crowd / max(n_box, 1),
                pairs_iou_gt_0_3=int(pair_hist[0]), pairs_iou_gt_0_5=int(pair_hist[1]),
                pairs_iou_gt_0_7=int(pair_hist[2]),
                mean_vbox_fbox_area_ratio=float(np.mean(vis)) if vis else float('nan'),
                ignore_regions=n_ignore, nms_oracle_recall=kept / max(n_box, 1))


def make_synthetic_crowdhuman(out_dir: str, num_train: int, num_val: int, seed: int = 0,
                              spec: SceneSpec = SceneSpec()) -> dict:
    """Write a synthetic CrowdHuman: ``Images/*.jpg``, ``annotation_{train,val}.odgt`` and the
    image-size caches ``id_hw_{train,val}.json`` (the files mmdet's ``CrowdHumanDataset``
    reads), atomically.

    Args:
        out_dir: the dataset folder (created).
        num_train: train images.
        num_val: val images.
        seed: the scenes' random seed.
        spec: the scene generator's knobs.

    Returns:
        dict: ``{split: crowd_statistics(records)}``.
    """
    os.makedirs(osp.join(out_dir, 'Images'), exist_ok=True)
    stats = {}
    for split, num, split_id in (('train', num_train, 0), ('val', num_val, 1)):
        records, sizes = [], {}
        for i in range(num):
            rng = np.random.default_rng([seed, split_id, i])
            img, gtboxes = render_scene(rng, spec)
            image_id = f'syn{seed}_{split}_{i:06d}'
            path = osp.join(out_dir, 'Images', f'{image_id}.jpg')
            ok, buf = cv2.imencode('.jpg', img, [cv2.IMWRITE_JPEG_QUALITY, spec.jpeg_quality])
            assert ok, path
            atomic_write_bytes(buf.tobytes(), path)
            records.append(dict(ID=image_id, gtboxes=gtboxes))
            sizes[image_id] = list(img.shape[:2])
        atomic_write_text(''.join(json.dumps(r) + '\n' for r in records),
                          osp.join(out_dir, f'annotation_{split}.odgt'))
        atomic_write_text(json.dumps(sizes), osp.join(out_dir, f'id_hw_{split}.json'))
        stats[split] = crowd_statistics(records)
    return stats

