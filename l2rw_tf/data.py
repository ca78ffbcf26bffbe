"""Datasets and `tf.data` pipelines.

Every training example carries a dict {"image", "label", "index", "is_noisy"}: `index` is its
position in the training set and `is_noisy` whether its label was corrupted, so weights can be
analysed per example. Images stay uint8 until the batch is formed (small checkpoints of the input
pipeline, which only shuffles indices).

Two experiment families: `mnist_imbalance` (paper Fig. 2) and `noisy_experiment` (CIFAR noisy
labels, paper Tables 1-2, and the report's MNIST BackgroundFlip), over any dataset `load_dataset`
knows: any tfds image-classification dataset by name (the paper's `mnist`, `cifar10`, `cifar100`,
or e.g. `fashion_mnist`), or a local image folder `folder:PATH`.
"""
import contextlib
import dataclasses
import hashlib
import inspect
import logging
import os
import pathlib
import re
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from l2rw_tf import choices, noise


class DataError(ValueError):
    """Data cannot be constructed as asked (missing offline, impossible split)."""


@dataclasses.dataclass
class ExperimentData:
    """Arrays of one experiment. Images uint8 [N, H, W, C], labels int64 [N]."""
    train_images: np.ndarray
    train_labels: np.ndarray
    train_is_noisy: np.ndarray
    clean_images: np.ndarray
    clean_labels: np.ndarray
    eval_sets: dict  # name -> (images, labels), e.g. {"test": ..., "train": ...}
    num_classes: int
    info: dict = dataclasses.field(default_factory=dict)  # counts and choices, for the logs
    train_source: np.ndarray = None  # index of each training / clean example in the source split
    clean_source: np.ndarray = None
    train_clean_labels: np.ndarray = None  # true labels of the training examples (noisy task)
    hyper_val_source: np.ndarray = None    # index of each hyper-validation example (noisy task)

    @property
    def input_shape(self):
        return self.train_images.shape[1:]


def load_tfds(name, split, data_dir=None, source_order=True):
    """(images uint8 [N, H, W, C], labels int64 [N]) of one split of a tfds image-classification
    dataset, with a clear error offline. `source_order`: put the split back in the order of the
    dataset's source files (`_in_source_order`), which is right only for builders that key their
    examples by source index, as tfds' mnist, cifar10 and cifar100 do (`load_dataset` asks for it
    for those alone); else the split comes in tfds' stored order."""
    images, labels, _ = _load_tfds(name, split, data_dir, source_order)
    return images, labels


def _as_arrays(ds, chunk=10000):
    """A supervised (image, label) dataset as two numpy arrays, read in chunks (a single
    batch_size=-1 read crashes on tfds.testing.mock_data's generated datasets)."""
    images, labels = [], []
    for x, y in tfds.as_numpy(ds.batch(chunk)):
        images.append(x)
        labels.append(y)
    if not images:
        raise DataError("the split is empty")
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)


def _load_tfds(name, split, data_dir=None, source_order=True):
    builder = _prepared_builder(name, data_dir)
    _check_splits(builder, name, (split,))
    return _read_tfds(builder, name, split, source_order)


def _read_tfds(builder, name, split, source_order):
    """(images, labels, num_classes) of `split` of the prepared image-classification `builder`,
    from the decode cache if it holds them."""
    num_classes = builder.info.features["label"].num_classes
    cache = _tfds_cache_path(builder, split, source_order)
    if cache is not None and cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            return z["images"], z["labels"], num_classes
    try:
        # One file at a time: a split of several files is then read in tfds's sorted order.
        in_order = tfds.ReadConfig(interleave_cycle_length=1)
        # The features themselves, not as_supervised: a dataset need not declare image and
        # label its supervised keys.
        ds = builder.as_dataset(split=split, read_config=in_order)
        images, labels = _as_arrays(ds.map(lambda example: (example["image"], example["label"])))
    except ImportError as e:
        raise _missing_module(e, name) from None
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 -- a damaged or unknown split; name it and the cause.
        raise DataError(f"cannot read split {split!r} of tfds dataset {name!r} prepared in "
                        f"{builder.data_dir_root} ({_brief(e)})") from None
    if source_order:
        images, labels = _in_source_order(split, images, labels)
    if cache is not None:
        _save_npz(cache, images=images, labels=labels)
    return images, labels, num_classes


def _check_classification(builder, name):
    """Refuses, from the builder's description alone (before anything is downloaded), a tfds
    dataset that is not image classification: it needs an `image` Image feature of one size and
    dtype uint8 and a `label` ClassLabel feature of at least two classes."""
    features = builder.info.features
    keys = sorted(features.keys()) if hasattr(features, "keys") else []
    image = features["image"] if "image" in keys else None
    label = features["label"] if "label" in keys else None
    wrong = [f"{key} is a {type(feature).__name__}, not a {kind.__name__}"
             for key, feature, kind in (("image", image, tfds.features.Image),
                                        ("label", label, tfds.features.ClassLabel))
             if feature is not None and not isinstance(feature, kind)]
    if wrong or image is None or label is None:
        detail = "".join(f"; {w}" for w in wrong)
        raise DataError(f"tfds dataset {name!r} is not an image-classification dataset "
                        f"(features {', '.join(keys) or 'none'}{detail}); --dataset needs "
                        f"features image and label (an Image and a ClassLabel)")
    shape = tuple(image.shape)
    if len(shape) != 3 or any(d is None for d in shape):
        raise DataError(f"tfds dataset {name!r} has images of no fixed size (image shape "
                        f"{shape}); --dataset needs images of one size (a config of one size, "
                        f"or the images resized into an image folder, folder:PATH)")
    dtype = np.dtype(getattr(image, "np_dtype", np.uint8))
    if dtype != np.uint8:
        raise DataError(f"tfds dataset {name!r} has {dtype.name} images; --dataset needs uint8 "
                        f"images (0-255)")
    if label.num_classes < 2:
        raise DataError(f"tfds dataset {name!r} has {label.num_classes} class; a "
                        f"classification task needs at least two")


def _check_splits(builder, name, needed):
    """Refuses a prepared dataset without the splits `needed`, saying which splits it has.
    (Under tfds.testing.mock_data a builder knows no splits: nothing to check.)"""
    splits = sorted(builder.info.splits)
    missing = [split for split in needed if split not in splits]
    if splits and missing:
        raise DataError(f"tfds dataset {name!r} has no {missing[0]!r} split (splits: "
                        f"{', '.join(splits)}); --dataset needs splits train and test")


def _prepared_builder(name, data_dir):
    """The tfds builder of image-classification dataset `name` in `data_dir` (None:
    $TFDS_DATA_DIR, else tfds' default directory), downloaded and prepared there first if it is
    not yet. An unknown name, or a dataset that is not image classification, is refused before
    anything is downloaded."""
    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR")
    if data_dir and os.path.isfile(data_dir):
        raise DataError(f"tfds data directory {data_dir} is a file, not a directory; point "
                        f"--data_dir or TFDS_DATA_DIR at a tfds data directory (it holds "
                        f"<dataset>/<version>/ folders)")
    try:
        # absl's (tfds') warning "Variant folder ... has no dataset_info.json": a missing
        # dataset is this module's own one-line error.
        with logger_quiet("absl"):
            builder = tfds.builder(name, data_dir=data_dir)
            prepared = builder.is_prepared()
    except ImportError as e:
        raise _missing_module(e, name) from None
    except tfds.core.registered.DatasetNotFoundError as e:
        raise _unknown_dataset(e, name, data_dir) from None
    except Exception as e:  # noqa: BLE001 -- e.g. an unknown config; tfds' message says which.
        raise DataError(f"cannot open tfds dataset {name!r} ({_brief(e)})") from None
    _check_classification(builder, name)
    if prepared:
        return builder
    root = builder.data_dir_root
    if data_dir and not os.path.isdir(data_dir):  # a mistyped path, rather than a place to fill
        raise DataError(f"tfds data directory {data_dir} does not exist (dataset {name!r} is "
                        f"prepared nowhere there); point --data_dir or TFDS_DATA_DIR at a "
                        f"prepared tfds directory, or create it to download {name!r} into it")
    # Offline, tfds would retry every file for minutes before giving up: refused at once when
    # none of the hosts it downloads from can be reached.
    unreachable = _unreachable_hosts(builder)
    if unreachable:
        raise DataError(
            f"tfds dataset {name!r} is not prepared in {root} and cannot be downloaded: "
            f"{unreachable}; prepare it once with internet access: python -c \"import "
            f"tensorflow_datasets as tfds; tfds.builder('{name}', data_dir='{root}')"
            f".download_and_prepare()\", or point --data_dir or TFDS_DATA_DIR at a directory "
            f"that holds it")
    print(f"tfds dataset {name!r} is not prepared in {root}: downloading and preparing it "
          f"there (Ctrl-C stops it)", file=sys.stderr, flush=True)
    try:
        builder.download_and_prepare()
    except ImportError as e:  # a broken install, not a missing dataset
        raise _missing_module(e, name) from None
    except Exception as e:  # noqa: BLE001 -- offline, tfds raises many kinds; name the fix.
        raise DataError(
            f"tfds dataset {name!r} is not prepared in {root} and preparing it failed "
            f"({_brief(e)}); prepare it once with internet access: python -c \"import "
            f"tensorflow_datasets as tfds; tfds.builder('{name}', data_dir='{root}')"
            f".download_and_prepare()\", or point --data_dir or TFDS_DATA_DIR at a directory "
            f"that holds it") from None
    return builder


@contextlib.contextmanager
def logger_quiet(name):
    """Within the block, the Python logger `name`'s warnings are not printed (errors are)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# Seconds to wait for a host's name and for a connection to it, when checking before a download.
PROBE_TIMEOUT = 10.0


def _unreachable_hosts(builder):
    """Why the files of `builder` cannot be downloaded (a text naming each host and its error),
    or "" when one of their hosts answers or the files are not known (tfds then tries). Each
    host is looked up and connected to once, with a timeout, in a thread of its own (a name
    lookup cannot time out by itself)."""
    try:
        urls = list(builder.url_infos or ())
    except Exception:  # noqa: BLE001 -- no registered checksums: nothing to check
        urls = []
    hosts = sorted({(u.hostname, u.port or (443 if u.scheme == "https" else 80))
                    for u in map(urllib.parse.urlsplit, urls)
                    if u.scheme in ("http", "https") and u.hostname})
    if not hosts or urllib.request.getproxies():  # through a proxy: only tfds can tell
        return ""
    if isinstance(builder, tfds.core.DatasetBuilder) and any(
            inspect.getattr_static(type(builder), name) is not real for name, real in (
                ("as_dataset", _REAL_AS_DATASET), ("download_and_prepare", _REAL_DOWNLOAD))):
        return ""  # tfds.testing.mock_data (or a test's stand-in): nothing is downloaded
    errors = {}

    def probe(host, port):
        try:
            socket.create_connection((host, port), timeout=PROBE_TIMEOUT).close()
            errors[host] = None
        except OSError as e:
            errors[host] = e.strerror or type(e).__name__
    threads = [threading.Thread(target=probe, args=hp, daemon=True) for hp in hosts]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 2 * PROBE_TIMEOUT
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0.0))
    if any(errors.get(host, "") is None for host, _ in hosts):
        return ""
    return "; ".join(f"{host} cannot be reached ({errors.get(host) or 'no answer'})"
                     for host, _ in hosts)


def _unknown_dataset(error, name, data_dir):
    """The DataError of a name tfds knows no dataset of, with tfds' suggestion if it has one."""
    suggestion = re.search(r"Did you mean: \S+ -> (\S+) \?", str(error))
    hint = f"; did you mean {suggestion.group(1)}?" if suggestion else ""
    where = data_dir or tfds.core.constants.DATA_DIR
    return DataError(f"--dataset={name} is unknown: tfds registers no dataset of that name and "
                     f"none is prepared in {where}{hint} (--dataset takes a tfds "
                     f"image-classification dataset by name, or folder:PATH)")


def _missing_module(error, name):
    """The DataError of an ImportError met while tfds loads dataset `name`."""
    module = error.name or str(error)
    return DataError(f"Python module {module!r}, which tensorflow_datasets needs to load "
                     f"{name!r}, cannot be imported ({_brief(error)}); reinstall the project's "
                     f"requirements: pip install -e . (in the repository)")


def _brief(error, limit=200):
    """An exception as one short line: its type and the start of its message's first line."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _in_source_order(split, images, labels):
    """A tfds split put back in the order of the dataset's source files.

    tfds writes a split sorted by md5(split name + key) (tensorflow_datasets/core/shuffle.py), and
    its mnist, cifar10 and cifar100 builders key each example by its index in the source files.
    The original code draws its splits by indexing those files in order, so restoring that order
    makes a seed pick the same images here as there."""
    salt = hashlib.md5(split.encode())

    def tfds_sort_key(source_index):
        key = salt.copy()
        key.update(str(source_index).encode())
        return key.digest()

    # source_index[j]: position in the source files of the j-th example tfds reads.
    source_index = np.array(sorted(range(len(labels)), key=tfds_sort_key), dtype=np.int64)
    order = np.argsort(source_index)
    return images[order], labels[order]


# tfds.testing.mock_data swaps DatasetBuilder.as_dataset for a generator of fake examples: the
# decode cache must neither store nor serve data while it is active.
_REAL_AS_DATASET = inspect.getattr_static(tfds.core.DatasetBuilder, "as_dataset")
_REAL_DOWNLOAD = inspect.getattr_static(tfds.core.DatasetBuilder, "download_and_prepare")


def _tfds_cache_path(builder, split, source_order):
    """Where the decoded arrays of a prepared tfds split are cached (decoding MNIST's 70,000 PNGs
    costs more than a short run's training): keyed by dataset, config, version, split, example
    order and the prepared files' names, sizes and mtimes. None when the data is not plain local
    record files."""
    if inspect.getattr_static(type(builder), "as_dataset") is not _REAL_AS_DATASET:
        return None
    root = pathlib.Path(str(builder.data_dir)).resolve()
    records = sorted(p for p in root.glob("*") if "record" in p.name) if root.is_dir() else []
    if not records:
        return None
    # "source": arrays in the source files' order (`_in_source_order`); "stored": tfds' order.
    # (The fingerprint covers the config: its files lie in a directory of their own.)
    order = "source" if source_order else "stored"
    key = f"{builder.name}_{builder.version}_{split}_{order}_{_files_fingerprint(root, records)}"
    return cache_dir() / f"tfds_{key}.npz"


def _save_npz(path, **arrays):
    """Writes arrays to `path` atomically (a crash never leaves a half-written cache). The
    temporary file's name is unique, so runs started together that decode the same data do not
    move each other's file away."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.stem + ".",
                                     suffix=".tmp.npz", delete=False) as tmp:
        np.savez(tmp, **arrays)
    os.replace(tmp.name, path)


# The paper's datasets, read in their source files' order; any other tfds dataset in tfds' own.
TFDS_DATASETS = choices.TFDS_DATASETS
FOLDER_PREFIX = choices.FOLDER_PREFIX
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
JPEG_COPY_NAME = "cifar10_jpeg"  # ../shared/datasets/cifar10_jpeg, the CIFAR-10 JPEG copy


def cache_dir():
    """Where decoded datasets are cached: $L2RW_CACHE_DIR, else ~/.cache/l2rw_tf."""
    return pathlib.Path(os.environ.get("L2RW_CACHE_DIR")
                        or pathlib.Path.home() / ".cache" / "l2rw_tf")


def resolve_folder(path):
    """An image folder path: as given (relative to the working directory), else relative to the
    repository checkout, so flagfiles naming ../shared/... work from anywhere."""
    candidates = [pathlib.Path(path).expanduser()]
    if not candidates[0].is_absolute():
        candidates.append(REPO_ROOT / path)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    raise DataError(f"image folder {path!r} does not exist (--dataset=folder:PATH needs "
                    f"PATH/<split>/<class>/<image> with splits train and test)")


def _files_fingerprint(root, paths):
    """A digest of `root` and each file's path relative to it, size and mtime: the key of a
    decode cache, which changes whenever the files do."""
    digest = hashlib.sha1(str(root).encode())
    for path in paths:
        st = os.stat(path)
        digest.update(f"{os.path.relpath(path, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _folder_fingerprint(root):
    """The fingerprint of every image file under `root`."""
    def images():
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                if name.lower().endswith(IMAGE_SUFFIXES):
                    yield os.path.join(dirpath, name)
    return _files_fingerprint(root, images())


# Version of the folder decode cache's content; 2: images keep their files' channel count (1:
# always 3 channels, tfds.ImageFolder's decoding).
FOLDER_CACHE_VERSION = 2


def load_folder(path, split, use_cache=True):
    """(images uint8 [N, H, W, C], labels int64 [N], class names) of one split of an image folder
    PATH/<split>/<class>/<image>, listed by `tfds.ImageFolder`: classes sorted by name, label =
    rank, tfds' own deterministic example order. C is the files' channel count: 1 when every file
    is grayscale, else 3 (grayscale files converted to RGB); alpha channels are dropped. A file
    that cannot be decoded is refused, DataError naming every such file: skipping it would quietly
    make the split differ from the folder. The decoded arrays are cached as .npz in `cache_dir()`,
    keyed by the folder's path and its files' sizes and mtimes, since decoding 60,000 JPEGs is
    slow.
    """
    root = resolve_folder(path)
    cache = None
    if use_cache:
        cache = cache_dir() / (f"folder{FOLDER_CACHE_VERSION}_{root.name}_"
                               f"{_folder_fingerprint(root)}_{split}.npz")
        if cache.exists():
            with np.load(cache, allow_pickle=False) as z:
                if "sixteen_bit" in z.files:  # caches written before the note have none
                    _note_16_bit(int(z["sixteen_bit"]), len(z["labels"]), root / split)
                return z["images"], z["labels"], [str(c) for c in z["classes"]]
    try:
        builder = tfds.ImageFolder(str(root))
    except Exception as e:  # noqa: BLE001
        raise DataError(f"cannot read image folder {str(root)!r}: {e}") from None
    if split not in builder.info.splits:
        if (root / split).is_dir():
            raise DataError(f"{root / split} has no class sub-folders; image folders need "
                            f"{root}/{split}/<class>/<image>")
        raise DataError(f"image folder {str(root)!r} has no {split!r} split (sub-folders: "
                        f"{sorted(builder.info.splits)}); it needs {root}/{split}/<class>/<image>")
    if builder.info.splits[split].num_examples == 0:
        raise DataError(f"image folder {str(root)!r} split {split!r} holds no images "
                        f"(.png, .jpg or .jpeg in {root}/{split}/<class>/)")
    classes = list(builder.info.features["label"].names)
    # tfds lists the files and reads them in its order; the decoding is ours (`_decode_files`).
    ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    files, encoded, labels = [], [], []
    for example in tfds.as_numpy(ds):
        files.append(example["image/filename"].decode())
        encoded.append(example["image"])
        labels.append(example["label"])
    images, labels = _decode_files(root, files, encoded), np.asarray(labels, np.int64)
    sixteen_bit = sum(_is_16_bit_png(blob) for blob in encoded)
    if cache is not None:
        _save_npz(cache, images=images, labels=labels, classes=np.asarray(classes),
                  sixteen_bit=np.int64(sixteen_bit))
    _note_16_bit(sixteen_bit, len(labels), root / split)
    return images, labels, classes


def _is_16_bit_png(blob):
    """Whether an encoded file is a PNG of 16 bits per sample (its IHDR's bit depth)."""
    return bytes(blob[:8]) == b"\x89PNG\r\n\x1a\n" and len(blob) > 24 and blob[24] == 16


def _note_16_bit(count, total, where):
    """Says, on stdout, how the 16-bit PNGs of a split were reduced to the 8 bits of uint8."""
    if count:
        print(f"note: {count} of the {total} images of {where} are 16-bit PNGs: each value is "
              f"reduced to 8 bits by its high byte (value // 256, as TensorFlow decodes them), "
              f"then scaled as every image", flush=True)


def _decode_files(root, files, encoded):
    """The images uint8 [N, H, W, C] of the encoded `files` of folder `root`, decoded by TF's
    decoders as stored; C is 1 if every file is grayscale (with or without alpha), else 3. Files
    of another channel count are decoded again by TF's own conversion, so an RGB JPEG comes out
    byte-identical to what tfds.ImageFolder (3 channels always) decodes."""
    images, corrupt = [], []
    # libjpeg and TF's logging print their own lines about a corrupt file on stderr: held back,
    # so that the refusal below is one line (and written out if every file decoded).
    with _stderr_held() as held:
        for file, blob in zip(files, encoded):
            try:
                images.append(tf.io.decode_image(blob, channels=0,
                                                 expand_animations=False).numpy())
            except tf.errors.OpError as e:
                corrupt.append((file, _op_error_reason(e)))
    if held and not corrupt:
        sys.stderr.write(held[0])
        sys.stderr.flush()
    corrupt.sort()
    if len(corrupt) == 1:
        file, reason = corrupt[0]
        raise DataError(f"cannot decode image file {file} of {str(root)!r} ({reason}); repair or "
                        f"remove it")
    if corrupt:
        listed = ", ".join(file for file, _ in corrupt[:5])
        more = f" and {len(corrupt) - 5} more" if len(corrupt) > 5 else ""
        raise DataError(f"cannot decode {len(corrupt)} image files of {str(root)!r}: {listed}"
                        f"{more} (the first: {corrupt[0][1]}); repair or remove them")
    first = images[0]
    for file, image in zip(files, images):
        if image.shape[:2] != first.shape[:2]:
            raise DataError(f"images of {str(root)!r} differ in size ({files[0]} is "
                            f"{first.shape[0]}x{first.shape[1]}, {file} is {image.shape[0]}x"
                            f"{image.shape[1]}); resize them to one size first")
    channels = 1 if all(image.shape[-1] <= 2 for image in images) else 3
    for i, image in enumerate(images):
        if image.shape[-1] != channels:  # grayscale -> RGB, or an alpha channel dropped
            images[i] = tf.io.decode_image(encoded[i], channels=channels,
                                           expand_animations=False).numpy()
    return np.stack(images)


@contextlib.contextmanager
def _stderr_held():
    """Within the block, what is written to file descriptor 2 (C libraries included) goes to a
    temporary file; the list yielded then holds it as text."""
    held = []
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), 2)
            try:
                yield held
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                tmp.seek(0)
                text = tmp.read().decode(errors="replace")
                if text:
                    held.append(text)
    finally:
        os.close(saved)


def _op_error_reason(error):
    """A TF op error's message without the op and function names around it."""
    message = re.sub(r"\{\{[^}]*\}\}|\[Op:\w+\]", "", error.message)
    return " ".join(message.split())


def dataset_label(dataset):
    """How results on `dataset` must be named (the JPEG copy is never "CIFAR-10"): the paper's
    datasets by their names in the paper, any other tfds dataset by its tfds name as given."""
    if dataset.startswith(FOLDER_PREFIX):
        path = dataset[len(FOLDER_PREFIX):]
        if pathlib.Path(path.rstrip("/")).name == JPEG_COPY_NAME:
            return "CIFAR-10 (JPEG copy)"
        return f"image folder {path}"
    return {"mnist": "MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}.get(dataset, dataset)


def load_dataset(dataset, data_dir=None):
    """((train images, labels), (test images, labels), num_classes) of `dataset`, images uint8
    [N, H, W, C] with the channel count of the data (1 grayscale, 3 RGB), labels int64 [N]:

    * a tfds image-classification dataset by name (name[/config][:version]): features `image`
      (an Image of one size) and `label` (a ClassLabel), splits train and test; from `data_dir`
      (None: $TFDS_DATA_DIR, else tfds' default), downloaded and prepared there if it is not yet.
      The paper's mnist, cifar10 and cifar100 come in the order of their source files (tfds keys
      their examples by source index, `_in_source_order`), so a seed draws the original code's
      images; any other dataset comes in tfds' stored order (its keys are unknown to us), which
      is deterministic for the prepared files. A name tfds does not know, a dataset of other
      features or without these splits is a one-line DataError, before any download when it can
      be told from the name.
    * `folder:PATH`, an image folder PATH/{train,test}/<class>/<image> (`load_folder`).
    """
    if dataset.startswith(FOLDER_PREFIX):
        path = dataset[len(FOLDER_PREFIX):]
        train_x, train_y, classes = load_folder(path, "train")
        if len(classes) < 2:
            raise DataError(
                f"image folder {str(resolve_folder(path))!r} has 1 class ({classes[0]!r}): a "
                f"classification task needs PATH/<split>/<class>/<image> with at least two class "
                f"sub-folders")
        test_x, test_y, _ = load_folder(path, "test")
        root = str(resolve_folder(path))
        untrained = [name for name, count in zip(classes, np.bincount(train_y, minlength=len(
            classes))) if count == 0]
        if untrained:
            raise DataError(f"image folder {root!r}: class {untrained[0]!r} has no training "
                            f"images (a class of the test split, or an empty folder); every "
                            f"class needs images in {root}/train/<class>/")
        if train_x.shape[1:3] != test_x.shape[1:3]:
            raise DataError(f"image folder {root!r}: train images are {train_x.shape[1]}x"
                            f"{train_x.shape[2]}, test images {test_x.shape[1]}x"
                            f"{test_x.shape[2]}; resize them to one size first")
        # One channel count for the whole folder: 1 if every file is grayscale, else 3 (a
        # grayscale split beside a colour one becomes RGB, as its files would decode).
        if train_x.shape[-1] != test_x.shape[-1]:
            train_x, test_x = (np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x
                               for x in (train_x, test_x))
        return (train_x, train_y), (test_x, test_y), len(classes)
    builder = _prepared_builder(dataset, data_dir)
    _check_splits(builder, dataset, ("train", "test"))
    source_order = builder.name in TFDS_DATASETS
    train_x, train_y, num_classes = _read_tfds(builder, dataset, "train", source_order)
    test_x, test_y, _ = _read_tfds(builder, dataset, "test", source_order)
    return (train_x, train_y), (test_x, test_y), num_classes


def noisy_experiment(dataset="cifar10", noise_type="uniform", ratio=0.4, semantics="paper",
                     num_clean=1000, clean_per_class=None, num_hyper_val=5000, seed=0,
                     num_train_subset=None, data_dir=None, arrays=None):
    """The noisy-label experiment of the original CIFAR code (reference §3), on any dataset.

    Splits of the training split (`noise.split_indices`): the last `num_hyper_val` of a
    RandomState(seed) shuffle are the hyper-validation set, kept twice (clean labels, and labels
    corrupted like the training set) for monitoring; of the rest, the clean set (`num_clean` at
    random, or `clean_per_class` of each class) is never corrupted, and the others are the noisy
    pool. `num_train_subset` keeps only the first K of the (shuffled) pool, *before* corruption,
    so a fraction `ratio` of the subset is still corrupted. Labels: `noise.corrupt_labels` of the
    pool in its order (the first floor(ratio * n) are candidates), from RandomState(seed + 1).
    The test split is untouched. `arrays` = ((train_x, train_y), (test_x, test_y), num_classes)
    skips loading.
    """
    if arrays is None:
        arrays = load_dataset(dataset, data_dir)
    (train_x, train_y), (test_x, test_y), num_classes = arrays
    try:
        split = noise.split_indices(len(train_y), num_clean, num_hyper_val, seed,
                                    clean_per_class=clean_per_class,
                                    labels=train_y if clean_per_class is not None else None)
    except ValueError as e:
        raise DataError(f"cannot split the {len(train_y)} training images of {dataset}: {e}") \
            from None
    pool = split["noisy"]
    if num_train_subset is not None:
        if not 0 < num_train_subset <= len(pool):
            raise DataError(f"--num_train_subset={num_train_subset} must be in [1, {len(pool)}] "
                            f"(the size of the noisy pool)")
        pool = pool[:num_train_subset]
    try:
        labels, is_noisy, background = noise.corrupt_labels(
            train_y[pool], num_classes, ratio, noise_type, semantics, seed)
        hv = split["hyper_val"]
        hv_labels, _, _ = noise.corrupt_labels(train_y[hv], num_classes, ratio, noise_type,
                                               semantics, seed)
    except ValueError as e:
        raise DataError(str(e)) from None
    clean = split["clean"]
    eval_sets = {"test": (test_x, test_y)}
    if len(hv):
        eval_sets["hyper_val_clean"] = (train_x[hv], train_y[hv])
        eval_sets["hyper_val_noisy"] = (train_x[hv], hv_labels)
    return ExperimentData(
        train_images=train_x[pool], train_labels=labels, train_is_noisy=is_noisy,
        clean_images=train_x[clean], clean_labels=train_y[clean],
        eval_sets=eval_sets, num_classes=num_classes,
        info={"dataset": dataset_label(dataset), "noise": noise_type, "ratio": ratio,
              "semantics": semantics, "background_class": background,
              "train": len(pool), "corrupted": int(is_noisy.sum()), "clean": len(clean),
              "hyper_val": len(hv), "test": len(test_y), "num_classes": num_classes},
        train_source=pool, clean_source=clean, train_clean_labels=train_y[pool],
        hyper_val_source=hv)


def _count(budget, fraction):
    # floor() of a product that should be an integer: 5000 * (1 - 0.9) is 499.999... in float,
    # which the original code floors to 499. The epsilon makes it the intended 500.
    return int(np.floor(budget * fraction + 1e-9))


# tf.examples.tutorials.mnist.input_data.read_data_sets, which the original MNIST code loads with,
# keeps the first 5,000 training images as its validation split and trains on the other 55,000.
MNIST_TF_VALIDATION = 5000


def mnist_imbalance(pos_ratio=0.995, ntrain=5000, nval=10, ntest=500, seed=0, data_dir=None,
                    minority_digit=4, majority_digit=9, arrays=None):
    """The 4-vs-9 class-imbalance set of the paper (reference §2); 4 -> label 0, 9 -> label 1.

    Of the budget `ntrain`, floor(ntrain·(1−p)) images are 4s and floor(ntrain·p) are 9s; `nval`
    of them (half of each class) are carved out as the clean set, disjoint from training. The test
    set has `ntest` images, half of each class. The draws are the original code's, image for image:
    the same `np.random.RandomState(seed)` calls over the same arrays, the MNIST files in their
    order, training images from TF's 55,000-image train split (the files' last 55,000: the first
    `MNIST_TF_VALIDATION` were its validation split). `arrays` = ((train_x, train_y), (test_x,
    test_y)) in the files' order skips tfds.
    """
    if not 0.0 < pos_ratio < 1.0:
        raise DataError(f"--pos_ratio must be in (0, 1), got {pos_ratio}")
    if nval < 0 or nval % 2:
        raise DataError(f"--nval must be even and >= 0 (half 4s, half 9s), got {nval}")
    if ntest <= 0 or ntest % 2:
        raise DataError(f"--ntest must be even and > 0 (half 4s, half 9s), got {ntest}")
    if arrays is None:
        arrays = load_tfds("mnist", "train", data_dir), load_tfds("mnist", "test", data_dir)
    (train_x, train_y), (test_x, test_y) = arrays
    rnd = np.random.RandomState(seed)

    def take(labels, digit, counts, first=0, shuffled=True):
        """Source indices of `digit` (from index `first` on), shuffled, cut into consecutive
        parts of `counts`. The shuffle is drawn even when `shuffled` is False, so the draws
        after it stay the original's."""
        pool = first + np.flatnonzero(labels[first:] == digit)
        if sum(counts) > len(pool):
            raise DataError(f"asked for {sum(counts)} images of digit {digit} but only "
                            f"{len(pool)} exist; lower --ntrain/--nval/--ntest")
        order = rnd.permutation(len(pool))
        if shuffled:  # the original draws the test 4s' shuffle but never applies it
            pool = pool[order]
        bounds = np.cumsum([0] + list(counts))
        return [pool[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    per_class_val = nval // 2
    n_minority = _count(ntrain, 1.0 - pos_ratio) - per_class_val
    n_majority = _count(ntrain, pos_ratio) - per_class_val
    if n_minority < 1:
        raise DataError(f"--ntrain {ntrain} at --pos_ratio {pos_ratio} leaves {n_minority} "
                        f"minority training images after the clean set; raise --ntrain or "
                        f"lower --pos_ratio/--nval")
    # Same draw order as the original: 4s (train pool, then test), then 9s. Its test 4s are the
    # first ntest/2 in the file's order.
    first = MNIST_TF_VALIDATION if len(train_y) == 60000 else 0  # small stand-ins keep all
    val0, train0 = take(train_y, minority_digit, [per_class_val, n_minority], first)
    (test0,) = take(test_y, minority_digit, [ntest // 2], shuffled=False)
    val1, train1 = take(train_y, majority_digit, [per_class_val, n_majority], first)
    (test1,) = take(test_y, majority_digit, [ntest // 2])

    def labelled(images, index0, index1):
        source = np.concatenate([index0, index1])
        labels = np.concatenate([np.zeros(len(index0), np.int64), np.ones(len(index1), np.int64)])
        order = rnd.permutation(len(source))  # the original's final shuffle
        return images[source[order]], labels[order], source[order]

    train_images, train_labels, train_source = labelled(train_x, train0, train1)
    clean_images, clean_labels, clean_source = labelled(train_x, val0, val1)
    test_images, test_labels, _ = labelled(test_x, test0, test1)
    return ExperimentData(
        train_images=train_images, train_labels=train_labels,
        train_is_noisy=np.zeros(len(train_labels), bool),
        clean_images=clean_images, clean_labels=clean_labels,
        eval_sets={"test": (test_images, test_labels), "train": (train_images, train_labels)},
        num_classes=2,
        info={"train_minority": len(train0), "train_majority": len(train1),
              "clean": len(clean_labels), "test": len(test_labels)},
        train_source=train_source, clean_source=clean_source)


def to_float(images):
    """uint8 -> float32 in [0, 1]."""
    return tf.cast(images, tf.float32) / 255.0


def to_signed(images):
    """uint8 -> float32 in [-1, 1]: (x - 0.5) * 2 of [0, 1], as the original CIFAR pipeline."""
    return (to_float(images) - 0.5) * 2.0


def augment_batch(images, seed, pad=2):
    """The original's training distortion of a batch [B, H, W, C] (any dtype): zero-pad `pad`
    pixels per side, random H x W crop, random horizontal flip, each image on its own draw.

    Stateless: the result is a function of `seed` (a shape-[2] integer tensor) alone, so a
    resumed input pipeline redraws exactly what the interrupted one would have.
    """
    shape = tf.shape(images)
    b, h, w = shape[0], shape[1], shape[2]
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    offsets = tf.random.stateless_uniform([b, 2], crop_seed, minval=0, maxval=2 * pad + 1,
                                          dtype=tf.int32)
    flip = tf.random.stateless_uniform([b], flip_seed) < 0.5
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    rows = offsets[:, :1] + tf.range(h)[None, :]   # [B, H]
    cols = offsets[:, 1:] + tf.range(w)[None, :]   # [B, W]
    cropped = tf.gather(padded, rows, axis=1, batch_dims=1)            # [B, H, W + 2 pad, C]
    cropped = tf.gather(cropped, cols, axis=2, batch_dims=1)           # [B, H, W, C]
    return tf.where(flip[:, None, None, None], tf.reverse(cropped, axis=[2]), cropped)


def _batches(index_ds, images, labels, is_noisy, preprocess, augment_seed):
    """Batches of indices -> dicts {"image", "label", "index", "is_noisy"}, with the stateless
    augmentation of batch k seeded by (augment_seed, k) when `augment_seed` is not None."""
    images, labels, is_noisy = (tf.constant(a) for a in (images, labels, is_noisy))

    def gather(k, index):
        batch = tf.gather(images, index)
        if augment_seed is not None:
            batch = augment_batch(batch, tf.stack([tf.constant(augment_seed, tf.int64), k]))
        return {"image": preprocess(batch), "label": tf.gather(labels, index),
                "index": index, "is_noisy": tf.gather(is_noisy, index)}

    return index_ds.enumerate().map(gather).prefetch(tf.data.AUTOTUNE)


# The original MNIST script evaluates after every 100th step, and its evaluation reads 5,000
# examples (50 batches of 100) from the same DataSet object the training batches come from: those
# examples never reach a training batch. (steps, examples) for `example_dataset(skip=...)`.
ORIGINAL_EVAL_DRAWS = (100, 5000)


def example_dataset(images, labels, is_noisy=None, batch_size=100, seed=0, preprocess=to_float,
                    augment_seed=None, skip=None):
    """Endless shuffled batches (epoch by epoch, like the original's `next_batch`) of dicts
    {"image", "label", "index", "is_noisy"}. Only indices pass through the shuffle, so the
    iterator's checkpoint is small; the images are gathered per batch. With `augment_seed`
    (an int), every batch is distorted by `augment_batch` before `preprocess`.

    `skip` = (steps, examples): after every `steps` batches, the next `examples` examples of the
    shuffled stream are passed over, as the original MNIST script's evaluation consumes them
    (`ORIGINAL_EVAL_DRAWS`); the epochs' permutations are the same as without `skip`."""
    if is_noisy is None:
        is_noisy = np.zeros(len(labels), bool)
    ds = tf.data.Dataset.range(len(labels))
    ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True).repeat()
    if skip is not None:
        kept = int(skip[0]) * batch_size
        cycle = kept + int(skip[1])
        ds = ds.enumerate().filter(lambda position, _: position % cycle < kept).map(
            lambda _, index: index)
    return _batches(ds.batch(batch_size, drop_remainder=True), images, labels, is_noisy,
                    preprocess, augment_seed)


def class_balanced_dataset(images, labels, batch_size=100, seed=0, preprocess=to_float,
                           is_noisy=None, augment_seed=None):
    """Batches that draw each class with equal probability (the `resample` baseline)."""
    classes = np.unique(labels)
    per_class = [
        tf.data.Dataset.from_tensor_slices(np.flatnonzero(labels == c))
        .shuffle(int(np.sum(labels == c)), seed=seed + i, reshuffle_each_iteration=True).repeat()
        for i, c in enumerate(classes)]
    ds = tf.data.Dataset.sample_from_datasets(per_class, seed=seed, rerandomize_each_iteration=True)
    if is_noisy is None:
        is_noisy = np.zeros(len(labels), bool)
    return _batches(ds.batch(batch_size, drop_remainder=True), images, labels, is_noisy,
                    preprocess, augment_seed)
