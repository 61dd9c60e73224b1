"""Contact sheet of generated CLEVR-format scenes with their CLEVR boxes (docs/algorithm.md §8) drawn.

    python -m benchmarks.contact_sheet --out /tmp/contact_sheet.png [--real CLEVR_v1.0]

Renders 16 scenes with `dspn_tf.data.clevr_mini` and draws the docs/algorithm.md §8
box of every object (red), so a person can check that scenes look like CLEVR
and that the boxes sit on the objects. With --real, a row of real CLEVR images
(with the same boxes) is appended for comparison.
"""

import argparse
import json
import os

import numpy as np
from PIL import Image, ImageDraw

from dspn_tf.data import clevr, clevr_mini


def draw(image, scene):
    im = Image.fromarray(np.asarray(image)[..., :3]).convert("RGB")
    pen = ImageDraw.Draw(im)
    for obj in scene["objects"]:
        box = clevr.object_box(obj, scene["directions"]) * np.array([clevr.WIDTH, clevr.HEIGHT] * 2)
        pen.rectangle(tuple(float(v) for v in box), outline=(255, 0, 0))
        x, y = obj["pixel_coords"][:2]
        pen.line([(x - 3, y), (x + 3, y)], fill=(255, 0, 0))
        pen.line([(x, y - 3), (x, y + 3)], fill=(255, 0, 0))
    return im


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/contact_sheet.png")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--real", default=None, help="a real CLEVR_v1.0 folder to compare")
    parser.add_argument("--scale", type=float, default=0.5, help="tile scale")
    args = parser.parse_args()
    tiles = []
    for index in range(16):
        scene, image = clevr_mini.make_scene(args.seed, "train", index)
        tiles.append(draw(image, scene))
    if args.real:
        with open(os.path.join(args.real, "scenes", "CLEVR_train_scenes.json")) as f:
            scenes = json.load(f)["scenes"][:4]
        for scene in scenes:
            path = os.path.join(args.real, "images", "train", scene["image_filename"])
            tiles.append(draw(Image.open(path), scene))
    w, h = int(480 * args.scale), int(320 * args.scale)
    rows = (len(tiles) + 3) // 4
    sheet = Image.new("RGB", (4 * w + 3 * 4, rows * h + (rows - 1) * 4), (255, 255, 255))
    for i, tile in enumerate(tiles):
        sheet.paste(tile.resize((w, h), Image.BILINEAR), ((i % 4) * (w + 4), (i // 4) * (h + 4)))
    sheet.save(args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
