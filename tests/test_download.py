"""tfds datasets on a fresh machine (issue 15): the real `download_and_prepare` of cifar10 and
cifar100 with only the download faked, and honest errors when a dataset cannot be prepared."""
import ast
import importlib.metadata as metadata
import json
import os
import pathlib
import subprocess
import sys
import tarfile
import textwrap

import numpy as np
import pytest
import requests
import tensorflow_datasets as tfds
from packaging.requirements import Requirement

from l2rw_tf import data

REPO = pathlib.Path(__file__).resolve().parents[1]
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"
PER_FILE = 3  # images per generated binary file: the real files hold 10,000


def cifar_image(source_index, rng):
    """A random 32x32 RGB image whose first pixel holds its index in the source files."""
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    image[0, 0] = source_index
    return image


def cifar_records(label_bytes, images):
    """The CIFAR binary format (tensorflow_datasets/image_classification/cifar.py `_load_data`):
    per image its label bytes (uint8 [N, k]), then its 3,072 bytes channel by channel."""
    return b"".join(labels.astype(np.uint8).tobytes() + image.transpose(2, 0, 1).tobytes()
                    for labels, image in zip(label_bytes, images))


def write_archive(path, prefix, files):
    """A .tar.gz holding `files` ({name: bytes}) under the folder `prefix`, as the real one."""
    staging = path.parent / (path.name + ".d") / prefix
    staging.mkdir(parents=True)
    for name, content in files.items():
        (staging / name).write_bytes(content)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(staging, arcname=prefix)
    return path


def fake_split(count, num_classes, rng):
    """`count` images, each holding its source index, and labels 0.. num_classes - 1."""
    images = np.stack([cifar_image(i, rng) for i in range(count)])
    return images, (np.arange(count) * 37 + 5) % num_classes


def fake_cifar10(directory, rng):
    """cifar-10-binary.tar.gz with PER_FILE images in each of data_batch_1..5.bin and
    test_batch.bin: (archive, train images, train labels, test images, test labels)."""
    train_x, train_y = fake_split(5 * PER_FILE, 10, rng)
    test_x, test_y = fake_split(PER_FILE, 10, rng)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck"]
    files = {"batches.meta.txt": ("\n".join(names) + "\n\n").encode(),  # as the real file ends
             "test_batch.bin": cifar_records(test_y[:, None], test_x)}
    for batch in range(5):
        part = slice(batch * PER_FILE, (batch + 1) * PER_FILE)
        files[f"data_batch_{batch + 1}.bin"] = cifar_records(train_y[part, None], train_x[part])
    archive = write_archive(directory / "cifar-10-binary.tar.gz", "cifar-10-batches-bin", files)
    return archive, train_x, train_y, test_x, test_y


def fake_cifar100(directory, rng):
    """cifar-100-binary.tar.gz: train.bin and test.bin, each image with its coarse and fine label
    bytes, and the label names: (archive, train images, fine labels, test images, fine labels)."""
    train_x, train_y = fake_split(2 * PER_FILE, 100, rng)
    test_x, test_y = fake_split(PER_FILE, 100, rng)
    files = {"coarse_label_names.txt": "".join(f"coarse{c}\n" for c in range(20)).encode(),
             "fine_label_names.txt": "".join(f"fine{c}\n" for c in range(100)).encode(),
             "train.bin": cifar_records(np.stack([train_y // 5, train_y], 1), train_x),
             "test.bin": cifar_records(np.stack([test_y // 5, test_y], 1), test_x)}
    archive = write_archive(directory / "cifar-100-binary.tar.gz", "cifar-100-binary", files)
    return archive, train_x, train_y, test_x, test_y


@pytest.fixture
def served_archives(tmp_path, monkeypatch):
    """Serves the generated archives in place of the CIFAR downloads: only the fetch is faked;
    tfds extracts the archive and runs its own split generators, writer and reader."""
    rng = np.random.default_rng(0)
    (tmp_path / "archives").mkdir()
    (tmp_path / "tfds").mkdir()
    fakes = {CIFAR10_URL: fake_cifar10(tmp_path / "archives", rng),
             CIFAR100_URL: fake_cifar100(tmp_path / "archives", rng)}
    fetched = []

    def download_and_extract(self, url):
        fetched.append(url)
        return self.extract(fakes[url][0])

    monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract",
                        download_and_extract)
    monkeypatch.setattr(data, "_unreachable_hosts", lambda builder: "")  # "online", if offline
    monkeypatch.setenv("L2RW_CACHE_DIR", str(tmp_path / "cache"))
    return fakes, fetched


@pytest.mark.parametrize("name,url,num_classes", [("cifar10", CIFAR10_URL, 10),
                                                  ("cifar100", CIFAR100_URL, 100)])
def test_cifar_is_downloaded_prepared_and_read_in_source_order(tmp_path, served_archives, name,
                                                               url, num_classes):
    fakes, fetched = served_archives
    _, train_x, train_y, test_x, test_y = fakes[url]
    data_dir = str(tmp_path / "tfds")
    os.makedirs(data_dir, exist_ok=True)  # tfds fills an existing directory; a missing one is refused
    (got_train_x, got_train_y), (got_test_x, got_test_y), got_classes = data.load_dataset(
        name, data_dir=data_dir)
    assert fetched == [url]  # prepared once, for both splits
    assert got_classes == num_classes
    assert got_train_x.shape == (len(train_y), 32, 32, 3) and got_train_x.dtype == np.uint8
    # The source files' order: data_batch_1's first images come first (`_in_source_order`).
    np.testing.assert_array_equal(got_train_x[:, 0, 0, 0], np.arange(len(train_y)))
    np.testing.assert_array_equal(got_train_x, train_x)
    np.testing.assert_array_equal(got_train_y, train_y)
    np.testing.assert_array_equal(got_test_x, test_x)
    np.testing.assert_array_equal(got_test_y, test_y)
    assert tfds.builder(name, data_dir=data_dir).is_prepared()

    # Decoded once into the cache, then served from it: the same arrays, no new download.
    cached = sorted((tmp_path / "cache").glob(f"tfds_{name}_*.npz"))
    assert len(cached) == 2  # train and test
    again = data.load_dataset(name, data_dir=data_dir)
    np.testing.assert_array_equal(again[0][0], train_x)
    np.testing.assert_array_equal(again[0][1], train_y)
    np.testing.assert_array_equal(again[1][0], test_x)
    assert fetched == [url] and sorted((tmp_path / "cache").iterdir()) == cached


def offline_get(*args, **kwargs):
    """requests' answer on a machine without network access."""
    raise requests.exceptions.ConnectionError(
        "HTTPSConnectionPool(host='www.cs.toronto.edu', port=443): Max retries exceeded "
        "(Caused by NameResolutionError(\"Failed to resolve 'www.cs.toronto.edu'\"))")


def test_offline_error_names_the_dataset_the_directory_and_how_to_prepare_it(tmp_path,
                                                                              monkeypatch):
    # The hosts answer (whatever this machine's network), the download then fails.
    monkeypatch.setattr(data, "_unreachable_hosts", lambda builder: "")
    monkeypatch.setattr(requests.Session, "get", offline_get)
    monkeypatch.setenv("L2RW_CACHE_DIR", str(tmp_path / "cache"))
    data_dir = str(tmp_path / "empty")
    os.makedirs(data_dir)
    with pytest.raises(data.DataError) as error:
        data.load_dataset("cifar10", data_dir=data_dir)
    message = str(error.value)
    assert "\n" not in message
    assert f"'cifar10' is not prepared in {data_dir}" in message
    assert (f"tfds.builder('cifar10', data_dir='{data_dir}').download_and_prepare()"
            in message)
    assert "internet" in message and "--data_dir" in message and "TFDS_DATA_DIR" in message
    assert "ConnectionError" in message  # what went wrong, not a guess
    assert "ModuleNotFoundError" not in message


def test_offline_error_without_data_dir_names_the_default_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_unreachable_hosts", lambda builder: "")
    monkeypatch.setattr(requests.Session, "get", offline_get)
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    monkeypatch.setattr(tfds.core.constants, "DATA_DIR", str(tmp_path / "default"))
    with pytest.raises(data.DataError, match=f"'cifar100' is not prepared in {tmp_path}"):
        data.load_tfds("cifar100", "train")


def test_a_missing_module_is_not_reported_as_a_missing_dataset(tmp_path, monkeypatch):
    def download_and_prepare(self, *args, **kwargs):
        raise ModuleNotFoundError("No module named 'importlib_resources'",
                                  name="importlib_resources")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", download_and_prepare)
    monkeypatch.setattr(data, "_unreachable_hosts", lambda builder: "")
    os.makedirs(tmp_path / "empty")
    with pytest.raises(data.DataError) as error:
        data.load_dataset("cifar10", data_dir=str(tmp_path / "empty"))
    message = str(error.value)
    assert "'importlib_resources'" in message and "pip install -e ." in message
    assert "not prepared" not in message and "TFDS_DATA_DIR" not in message


def declared_requirements():
    """install_requires of setup.py, read from the file (the installed metadata may be stale)."""
    call = next(node for node in ast.walk(ast.parse((REPO / "setup.py").read_text()))
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup")
    keyword = next(k for k in call.keywords if k.arg == "install_requires")
    return ast.literal_eval(keyword.value)


def test_setup_declares_what_tfds_downloads_need():
    # tfds 4.9.10 imports importlib_resources to find a builder's checksums, but declares it
    # only for Python < 3.9.
    assert "importlib_resources" in declared_requirements()


def normalized(distribution):
    return distribution.lower().replace("_", "-")


def installed_by(requirements):
    """The names of the distributions that installing `requirements` installs, as the installed
    metadata says (markers and extras evaluated)."""
    names, todo, seen = set(), [Requirement(r) for r in requirements], set()
    while todo:
        requirement = todo.pop()
        extras = requirement.extras or {""}
        if (normalized(requirement.name), frozenset(extras)) in seen:
            continue
        seen.add((normalized(requirement.name), frozenset(extras)))
        try:
            needs = metadata.requires(requirement.name) or []
        except metadata.PackageNotFoundError:  # not for this platform
            continue
        names.add(normalized(requirement.name))
        for text in needs:
            needed = Requirement(text)
            if needed.marker is None or any(needed.marker.evaluate({"extra": e}) for e in extras):
                todo.append(needed)
    return names


# Prepares cifar10 and cifar100 from the archives in `fakes` through the project's loader, in an
# interpreter where the modules of the distributions in `blocked` cannot be imported.
ON_A_MACHINE_WITH_ONLY_THE_DECLARED_REQUIREMENTS = textwrap.dedent("""
    import importlib.abc, json, sys
    blocked = set(json.loads(sys.argv[3]))

    class NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in blocked:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, NotInstalled())
    import tensorflow_datasets as tfds
    from l2rw_tf import data
    fakes = json.loads(sys.argv[1])
    tfds.download.DownloadManager.download_and_extract = lambda self, url: self.extract(fakes[url])
    data._unreachable_hosts = lambda builder: ""  # "online", if this machine is not
    for name in ("cifar10", "cifar100"):
        (train_x, _), _, _ = data.load_dataset(name, data_dir=sys.argv[2])
        print(name, train_x.shape)
""")


def test_a_machine_with_only_the_declared_requirements_can_download(tmp_path):
    """The real download_and_prepare of cifar10 and cifar100 with every installed distribution
    that setup.py's requirements do not install (transitively) hidden, as on a fresh machine:
    tfds imports some of its dependencies only there (importlib_resources, issue 15)."""
    rng = np.random.default_rng(0)
    (tmp_path / "archives").mkdir()
    (tmp_path / "tfds").mkdir()
    fakes = {CIFAR10_URL: str(fake_cifar10(tmp_path / "archives", rng)[0]),
             CIFAR100_URL: str(fake_cifar100(tmp_path / "archives", rng)[0])}
    declared = installed_by(declared_requirements()) | {"l2rw-tf"}
    blocked = sorted(
        module for module, distributions in metadata.packages_distributions().items()
        if module not in sys.stdlib_module_names
        and not {normalized(d) for d in distributions} & declared)
    run = subprocess.run(
        [sys.executable, "-c", ON_A_MACHINE_WITH_ONLY_THE_DECLARED_REQUIREMENTS, json.dumps(fakes),
         str(tmp_path / "tfds"), json.dumps(blocked)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "L2RW_CACHE_DIR": str(tmp_path / "cache"),
             "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert run.returncode == 0, run.stderr[-2000:]
    shapes = [line for line in run.stdout.splitlines() if line.startswith("cifar")]
    assert shapes == ["cifar10 (15, 32, 32, 3)", "cifar100 (6, 32, 32, 3)"]
