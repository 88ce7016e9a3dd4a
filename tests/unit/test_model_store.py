import json

import pytest

from shared.models.store import MANIFEST, ModelStore, ModelStoreError, version_number


def write_files(files: dict[str, bytes]):
    def fill(path):
        for name, data in files.items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(data)

    return fill


def test_versions_are_numbered_and_manifested(tmp_path):
    store = ModelStore(tmp_path)
    m1 = store.write_version(
        "policy", write_files({"model.safetensors": b"a", "config.json": b"{}"}), eval_metrics={"satisfaction": 0.4}
    )
    m2 = store.write_version("policy", write_files({"model.safetensors": b"b"}), parent_version=m1.version)
    assert (m1.version, m2.version) == ("v1", "v2")
    assert store.versions("policy") == ["v1", "v2"]
    manifest = json.loads((tmp_path / "policy" / "v2" / MANIFEST).read_text())
    assert manifest["parent_version"] == "v1"
    assert set(manifest["files"]) == {"model.safetensors"}
    assert store.manifest("policy", "v1").eval_metrics == {"satisfaction": 0.4}


def test_version_ordering_is_numeric(tmp_path):
    store = ModelStore(tmp_path)
    for _ in range(11):
        store.write_version("reward", write_files({"model.safetensors": b"x"}))
    assert store.latest("reward") == "v11"


def test_failed_write_leaves_nothing(tmp_path):
    store = ModelStore(tmp_path)

    def fill(path):
        (path / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError):
        store.write_version("policy", fill)
    assert store.versions("policy") == []
    assert list((tmp_path / "policy").iterdir()) == []


def test_pickle_weights_are_refused(tmp_path):
    store = ModelStore(tmp_path)
    with pytest.raises(ModelStoreError, match="pickle"):
        store.write_version("policy", write_files({"pytorch_model.bin": b"x"}))


def test_half_written_version_is_refused(tmp_path):
    store = ModelStore(tmp_path)
    (tmp_path / "policy" / "v1").mkdir(parents=True)
    (tmp_path / "policy" / "v1" / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ModelStoreError, match="half-written"):
        store.open_version("policy", "v1")


def test_corrupt_file_is_refused(tmp_path):
    store = ModelStore(tmp_path)
    store.write_version("policy", write_files({"model.safetensors": b"good"}))
    (tmp_path / "policy" / "v1" / "model.safetensors").write_bytes(b"evil")
    with pytest.raises(ModelStoreError, match="sha256 of model.safetensors"):
        store.open_version("policy", "v1")
    assert store.open_version("policy", "v1", verify=False).name == "v1"


def test_missing_version_lists_what_exists(tmp_path):
    store = ModelStore(tmp_path)
    store.write_version("policy", write_files({"model.safetensors": b"x"}))
    with pytest.raises(ModelStoreError, match="available: v1"):
        store.open_version("policy", "v9")


def test_current_pointer_defaults_to_latest_and_survives_rollback(tmp_path):
    store = ModelStore(tmp_path)
    assert store.current("policy") is None
    store.write_version("policy", write_files({"model.safetensors": b"1"}))
    store.write_version("policy", write_files({"model.safetensors": b"2"}))
    assert store.current("policy") == "v2"
    store.set_current("policy", "v1")
    assert store.current("policy") == "v1"
    with pytest.raises(ModelStoreError):
        store.set_current("policy", "v7")


def test_unknown_kind_is_refused(tmp_path):
    with pytest.raises(ModelStoreError, match="unknown model kind"):
        ModelStore(tmp_path).versions("value")


def test_a_replica_serves_current_even_when_an_update_event_is_stale(tmp_path):
    store = ModelStore(tmp_path)
    for data in (b"1", b"2", b"3"):
        store.write_version("policy", write_files({"model.safetensors": data}))
    store.set_current("policy", "v3")
    sha = {v: store.manifest_sha256("policy", v) for v in ("v2", "v3")}
    assert store.version_to_serve("policy", "v3", sha["v3"]) == ("v3", sha["v3"])
    # an event for v2 arriving after CURRENT moved on to v3 must not move the replica back
    assert store.version_to_serve("policy", "v2", sha["v2"]) == ("v3", sha["v3"])


@pytest.mark.parametrize("name", ["v1\n", "v\u0663", "v", "v-1", "V1", "v1.0", " v1"])
def test_only_ascii_v_numbers_are_versions(name):
    # Noticed while fuzzing Promote and the update topic: "v1\n" and "v" + an Arabic-Indic digit were versions.
    with pytest.raises(ModelStoreError, match="bad version name"):
        version_number(name)
    assert version_number("v12") == 12


@pytest.mark.parametrize("version", ["../reward/v1", "v1/../../x", "/etc", "", "latest", "v1/"])
def test_every_method_refuses_a_version_name_that_is_not_one(tmp_path, version):
    store = ModelStore(tmp_path)
    store.write_version("policy", write_files({"model.safetensors": b"a"}))
    for call in (store.manifest, store.open_version, store.manifest_sha256, store.version_dir):
        with pytest.raises(ModelStoreError, match="bad version name"):
            call("policy", version)
    with pytest.raises(ModelStoreError, match="bad version name"):
        store.set_current("policy", version)


@pytest.mark.parametrize("hostile", ["../../secret.txt", "/abs/secret.txt", "sub/../../secret.txt", "link/secret.txt"])
def test_a_hostile_manifest_cannot_name_a_file_outside_its_version(tmp_path, hostile):
    store = ModelStore(tmp_path / "store")
    (tmp_path / "secret.txt").write_text("not a model")
    store.write_version("policy", write_files({"model.safetensors": b"a"}))
    vdir = store.version_dir("policy", "v1")
    (vdir / "link").symlink_to(tmp_path, target_is_directory=True)  # a link out of the version
    manifest = json.loads((vdir / MANIFEST).read_text())
    manifest["files"][hostile] = "0" * 64
    (vdir / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelStoreError, match="inside its version|outside its version"):
        store.open_version("policy", "v1")


def test_a_manifest_that_names_another_version_is_refused(tmp_path):
    store = ModelStore(tmp_path)
    store.write_version("policy", write_files({"model.safetensors": b"a"}))
    store.write_version("policy", write_files({"model.safetensors": b"b"}))
    manifest = json.loads((tmp_path / "policy" / "v2" / MANIFEST).read_text())
    manifest["version"] = "v1"
    (tmp_path / "policy" / "v2" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelStoreError, match="says it is policy v1, not policy v2"):
        store.open_version("policy", "v2")


def test_a_current_pointer_that_names_no_version_is_an_error_saying_what_to_fix(tmp_path):
    store = ModelStore(tmp_path)
    store.write_version("policy", write_files({"model.safetensors": b"a"}))
    (tmp_path / "policy" / "CURRENT").write_text("../../etc\n")
    with pytest.raises(ModelStoreError, match="CURRENT names '../../etc', not a version"):
        store.current("policy")
