"""Images: a small BatchNorm ResNet on CIFAR-10 (the offline JPEG copy) with noisy labels, L2RW vs plain.

Data: an image folder PATH/{train,test}/<class>/<image> (default: the JPEG copy of CIFAR-10 in
../shared/datasets/cifar10_jpeg, whose results must be labelled "CIFAR-10 (JPEG copy)"), read by
`l2rw_tf.data.load_folder` (decoded once, then cached). The first --num_train images of the
train split, in tfds' order, are the training pool: 10 per class become the clean set, --ratio
of the rest get corrupted labels. The test split (10,000 images) only measures.

Model: the command line's CPU-scale pre-activation ResNet (`l2rw_tf.models.resnet_small`: one
unit per stage, width 0.5, BatchNorm momentum 0.99, weight decay 1e-4), as in
configs/cifar10_*_resnet32_cpu.flags; inputs scaled to [-1, 1] as the original CIFAR code, no
augmentation. 2,000 noisy images for 50 epochs of batch 100 is that flagfile's 1,000 steps at
lr 0.1 (/10 at half, /100 at three quarters).

    python examples/cifar_resnet.py                  # about 8 minutes a seed on 2 CPU cores
"""
import os
import pathlib
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

NAME = "cifar_resnet"
JPEG_COPY = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / \
    "cifar10_jpeg"


def load_data(args):
    import numpy as np
    from l2rw_tf import data

    try:
        train_images, train_labels, classes = data.load_folder(args.folder, "train")
        test_images, test_labels, _ = data.load_folder(args.folder, "test")
    except data.DataError as e:
        raise SystemExit(f"error: {e}") from None
    images = train_images[:args.num_train]

    def signed(x):  # [-1, 1], as the original CIFAR pipeline (data.to_signed)
        return (x.astype(np.float32) / 255.0 - 0.5) * 2.0

    label = "CIFAR-10 (JPEG copy)" if pathlib.Path(args.folder).resolve() == \
        JPEG_COPY.resolve() else f"image folder {args.folder}"
    return {"train_x": signed(images), "train_y": train_labels[:args.num_train],
            "test_x": signed(test_images), "test_y": test_labels,
            "num_classes": len(classes), "class_names": classes, "images": images,
            "description": f"{label}: the first {len(images)} training images, "
                           f"{len(test_labels)} test images"}


def build_model(args, data):
    from l2rw_tf.models import resnet_small
    return resnet_small(data["num_classes"], units=1, width=0.5, bn_momentum=0.99,
                        weight_decay=1e-4, input_shape=data["train_x"].shape[1:])


def make_parser():
    p = harness.parser(NAME, __doc__.splitlines()[0], epochs=50, batch_size=100, lr=0.1)
    p.add_argument("--folder", default=str(JPEG_COPY),
                   help="image folder with train/ and test/ splits of class sub-folders")
    p.add_argument("--num_train", type=int, default=2100,
                   help="training pool: the first N training images (clean set included)")
    return p


def main(argv=None):
    p = make_parser()
    args = p.parse_known_args(argv)[0]
    if args.num_train < 1:
        p.error("--num_train must be at least 1")
    return harness.main(NAME, None, load_data, build_model, argv=argv, parser=p)


if __name__ == "__main__":
    main()
