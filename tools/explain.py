"""Explain every detection of a trained detector on an image or a folder of images.

For each image it writes ``<name>_<method>_<target>.png`` (the detections, then one heat-map
panel per explained detection), ``<name>_<method>_<target>_combined.png`` (all the maps in
one picture, each detection's map and box in its own colour: the ODAM paper's Fig. 3, right)
and ``<name>_<method>_<target>.npz`` (bboxes, scores, labels, heatmaps at the image size).

    python tools/explain.py CONFIG CHECKPOINT IMAGE_OR_DIR [...] --out-dir DIR \
        [--method odam|gradcam|gradcampp|ssgradcampp|drise|dhsic|vps] \
        [--target score|logit|x1|y1|x2|y2] [--score-thr 0.3] [--topk 8] [--mode fast|exact] \
        [--features auto|towers|...] [--text 'person . bicycle'] [--no-smooth] [--no-verify]
        [--device cpu]
"""
import argparse
import io
import os
import os.path as osp
import sys

import cv2
import numpy as np
from mmengine.config import DictAction

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import exit_on_data_error, float_between, int_at_least  # noqa: E402

from odamtrain.apis import METHODS, explain_detector, init_detector  # noqa: E402
from odamtrain.explain import FEATURES, MODES, TARGETS  # noqa: E402
from odamtrain.utils import atomic_write_bytes  # noqa: E402
from odamtrain.visualization import render_combined, render_explanations  # noqa: E402

IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp')


def parse_args():
    p = argparse.ArgumentParser(description='Heat maps for every detection (ODAM)')
    p.add_argument('config')
    p.add_argument('checkpoint')
    p.add_argument('images', nargs='+', help='image files and/or folders of images')
    p.add_argument('--out-dir', required=True)
    p.add_argument('--method', default='odam', choices=METHODS)
    p.add_argument('--target', default='score', choices=TARGETS)
    p.add_argument('--score-thr', type=float_between(0, 1), default=0.3,
                   help='explain detections scoring at least this')
    p.add_argument('--topk', type=int_at_least(1), default=8,
                   help='explain at most this many per image')
    p.add_argument('--mode', default='fast', choices=MODES,
                   help='dense heads: windowed (fast, windows) or exact gradients')
    p.add_argument('--features', default='auto', choices=FEATURES,
                   help="A, what the maps read (default: the family's; the detector's "
                        "adapter lists its choices, e.g. 'towers' for dense heads)")
    p.add_argument('--text', default=None,
                   help="the prompt of a grounding detector (Grounding DINO), the same for "
                        "every image: class names separated by ' . ', e.g. 'person . bicycle'")
    p.add_argument('--no-smooth', action='store_true', help="no Gaussian Phi (authors' code)")
    p.add_argument('--no-verify', action='store_true',
                   help="skip the check, on the first image, that the explained detections "
                        "are the detector's own predict")
    p.add_argument('--max-images', type=int_at_least(0), default=0,
                   help='only the first N images (0: all)')
    p.add_argument('--device', default='cpu')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config settings, e.g. model.test_cfg.score_thr=0.01')
    return p.parse_args()


def list_images(paths: list) -> list:
    """The image files of ``paths`` (files, and the images of folders), each once."""
    files = []
    for path in paths:
        if osp.isfile(path):
            files.append(path)
        elif osp.isdir(path):
            found = sorted(osp.join(path, f) for f in os.listdir(path)
                           if f.lower().endswith(IMAGE_EXTS))
            if not found:
                sys.exit(f'error: no images ({", ".join(IMAGE_EXTS)}) in {path}')
            files += found
        else:
            sys.exit(f'error: {path} is neither an image nor a folder')
    return list(dict.fromkeys(osp.abspath(f) for f in files))


def output_stems(files: list) -> list:
    """One distinct output name per image: its file name without extension, or where two
    images share it (``a/x.jpg``, ``b/x.jpg``), its path below their common folder
    (``a__x_jpg``, ``b__x_jpg``)."""
    names = [osp.splitext(osp.basename(f))[0] for f in files]
    if len(set(names)) == len(names):
        return names
    common = osp.commonpath(files) if len(files) > 1 else osp.dirname(files[0])
    shared = {n for n in names if names.count(n) > 1}
    return [osp.relpath(f, common).replace(os.sep, '__').replace('.', '_') if n in shared
            else n for f, n in zip(files, names)]


def main():
    args = parse_args()
    from mmengine.utils import ProgressBar
    images = list_images(args.images)[:args.max_images or None]
    suffix = f'_{args.method}_{args.target}'
    stems = [osp.join(args.out_dir, stem + suffix) for stem in output_stems(images)]
    existing = [s + ext for s in stems for ext in ('.png', '_combined.png', '.npz')
                if osp.exists(s + ext)]
    with exit_on_data_error():
        model = init_detector(args.config, args.checkpoint, device=args.device,
                              cfg_options=args.cfg_options)
    os.makedirs(args.out_dir, exist_ok=True)
    if existing:
        print(f'replacing {len(existing)} files of an earlier run in {args.out_dir} '
              f'(e.g. {osp.basename(existing[0])})')
    bar = ProgressBar(len(images))
    for i, (path, stem) in enumerate(zip(images, stems)):
        img = cv2.imread(path)
        if img is None:
            sys.exit(f'error: cannot read image {path}')
        with exit_on_data_error():
            pred = explain_detector(model, img, method=args.method, target=args.target,
                                    smooth=None if args.no_smooth else 'gaussian',
                                    mode=args.mode, features=args.features, text=args.text,
                                    verify=i == 0 and not args.no_verify).pred_instances
        keep = (pred.scores >= args.score_thr).nonzero()[:, 0][:args.topk]  # sorted by score
        pred = pred[keep]
        boxes, scores = pred.bboxes.cpu().numpy(), pred.scores.cpu().numpy()
        maps = pred.heatmaps.cpu().numpy()
        picture = render_explanations(img, boxes, scores, maps)
        atomic_write_bytes(cv2.imencode('.png', picture)[1].tobytes(), stem + '.png')
        combined = render_combined(img, boxes, maps)
        atomic_write_bytes(cv2.imencode('.png', combined)[1].tobytes(), stem + '_combined.png')
        buf = io.BytesIO()
        np.savez_compressed(buf, bboxes=boxes, scores=scores, labels=pred.labels.cpu().numpy(),
                            heatmaps=maps.astype(np.float32))
        atomic_write_bytes(buf.getvalue(), stem + '.npz')
        bar.update()
    print(f'\nwrote {len(images)} x 2 pictures and {len(images)} .npz files to {args.out_dir}')


if __name__ == '__main__':
    main()
