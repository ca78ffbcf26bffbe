"""Image folders (`--dataset=folder:PATH`, issue 15): corrupt files named, too few classes
explained, the files' channel count kept, tfds.ImageFolder's example order kept."""
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from l2rw_tf import data


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("L2RW_CACHE_DIR", str(tmp_path / "cache"))


def write_images(root, images_of, splits=("train", "test"), classes=("ant", "bee")):
    """PNGs root/<split>/<class>/<i>.png of images_of(split, class): {path: image}."""
    written = {}
    for split in splits:
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i, image in enumerate(images_of(split, name)):
                path = root / split / name / f"{i}.png"
                path.write_bytes(tf.io.encode_png(image).numpy())
                written[path] = image
    return written


def random_images(count, channels, seed, size=(5, 4)):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, channels), dtype=np.uint8) for _ in range(count)]


def test_a_corrupt_image_is_refused_by_name(tmp_path):
    write_images(tmp_path / "imgs", lambda split, name: random_images(3, 3, len(name)))
    corrupt = tmp_path / "imgs" / "train" / "bee" / "x.png"
    corrupt.write_bytes(b"this is not a PNG")
    with pytest.raises(data.DataError) as error:
        data.load_dataset(f"folder:{tmp_path / 'imgs'}")
    message = str(error.value)
    assert str(corrupt) in message and "\n" not in message
    assert "remove" in message  # the fix
    assert not list((tmp_path / "cache").glob("*.npz"))  # nothing cached


def test_several_corrupt_images_are_all_named(tmp_path):
    write_images(tmp_path / "imgs", lambda split, name: random_images(2, 3, 0))
    bad = [tmp_path / "imgs" / "train" / name / "x.png" for name in ("ant", "bee")]
    for path in bad:
        path.write_bytes(b"")
    with pytest.raises(data.DataError) as error:
        data.load_folder(str(tmp_path / "imgs"), "train")
    assert all(str(path) in str(error.value) for path in bad)
    assert "2 image files" in str(error.value)


def test_a_one_class_folder_says_what_it_needs(tmp_path):
    write_images(tmp_path / "one", lambda split, name: random_images(2, 3, 0), classes=("ant",))
    with pytest.raises(data.DataError) as error:
        data.load_dataset(f"folder:{tmp_path / 'one'}")
    message = str(error.value)
    assert str(tmp_path / "one") in message and "1 class" in message and "'ant'" in message
    assert "<split>/<class>/" in message and "at least two" in message


def test_an_empty_or_missing_split_is_explained(tmp_path):
    write_images(tmp_path / "imgs", lambda split, name: random_images(2, 3, 0), splits=("train",))
    with pytest.raises(data.DataError, match=r"has no 'test' split .*imgs/test/<class>/<image>"):
        data.load_dataset(f"folder:{tmp_path / 'imgs'}")
    for name in ("ant", "bee"):
        (tmp_path / "imgs" / "test" / name).mkdir(parents=True)
    with pytest.raises(data.DataError, match=r"split 'test' holds no images"):
        data.load_dataset(f"folder:{tmp_path / 'imgs'}")
    (tmp_path / "bare" / "train").mkdir(parents=True)
    with pytest.raises(data.DataError, match=r"bare/train has no class sub-folders"):
        data.load_folder(str(tmp_path / "bare"), "train")


def decoded(images, labels, classes):
    """{(class name, image bytes)} of a split: its content, whatever the order."""
    return sorted((classes[label], image.tobytes()) for image, label in zip(images, labels))


@pytest.mark.parametrize("channels", [1, 3])
def test_the_files_channel_count_is_kept(tmp_path, channels):
    written = write_images(tmp_path / "imgs",
                           lambda split, name: random_images(3, channels, len(split + name)))
    (train_x, train_y), (test_x, _), num_classes = data.load_dataset(
        f"folder:{tmp_path / 'imgs'}")
    assert train_x.shape == (6, 5, 4, channels) and test_x.shape == (6, 5, 4, channels)
    assert train_x.dtype == np.uint8 and num_classes == 2
    want = decoded([image for path, image in written.items() if "train" in path.parts],
                   [0 if "ant" in path.parts else 1 for path in written if "train" in path.parts],
                   ["ant", "bee"])
    assert decoded(train_x, train_y, ["ant", "bee"]) == want


def test_grayscale_files_among_colour_ones_become_rgb(tmp_path):
    gray = random_images(2, 1, 7)
    written = write_images(
        tmp_path / "imgs",
        lambda split, name: gray if name == "ant" else random_images(2, 3, 8))
    images, labels, classes = data.load_folder(str(tmp_path / "imgs"), "train")
    assert images.shape == (4, 5, 4, 3)
    want = [np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
            for path, image in written.items() if "train" in path.parts]
    want_labels = [0 if "ant" in path.parts else 1 for path in written if "train" in path.parts]
    assert decoded(images, labels, classes) == decoded(want, want_labels, classes)


def test_examples_come_in_tfds_image_folders_order(tmp_path):
    """The order (and images) that tfds.ImageFolder gives: the committed CIFAR-10 JPEG results
    depend on which image lands where."""
    write_images(tmp_path / "imgs", lambda split, name: random_images(6, 3, len(split + name)),
                 classes=("cat", "ant", "bee"))
    builder = tfds.ImageFolder(str(tmp_path / "imgs"))
    for split in ("train", "test"):
        want = list(tfds.as_numpy(builder.as_dataset(split=split, as_supervised=True)))
        images, labels, classes = data.load_folder(str(tmp_path / "imgs"), split)
        assert classes == ["ant", "bee", "cat"]
        np.testing.assert_array_equal(images, np.stack([image for image, _ in want]))
        np.testing.assert_array_equal(labels, [label for _, label in want])


def test_a_cache_written_before_channels_were_kept_is_not_served(tmp_path):
    """Caches of the earlier load_folder held grayscale folders as 3 channels."""
    write_images(tmp_path / "imgs", lambda split, name: random_images(2, 1, 0))
    root = (tmp_path / "imgs").resolve()
    stale = tmp_path / "cache" / f"folder_{root.name}_{data._folder_fingerprint(root)}_train.npz"
    stale.parent.mkdir()
    np.savez(stale, images=np.zeros((4, 5, 4, 3), np.uint8), labels=np.zeros(4, np.int64),
             classes=np.asarray(["ant", "bee"]))
    images, _, _ = data.load_folder(str(tmp_path / "imgs"), "train")
    assert images.shape == (4, 5, 4, 1)
