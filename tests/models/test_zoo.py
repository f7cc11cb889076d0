import pytest
import torch

from autoprune.errors import ConfigError, UnknownNameError
from autoprune.models import ZOO, build_model, load_checkpoint
from tests.conftest import TINY_REF


@pytest.mark.parametrize("name", ZOO.names())
def test_zoo_forward_shape(name):
    spec = ZOO.get(name)
    model = build_model(name, num_classes=7).eval()
    size = spec.input_size if spec.input_size <= 32 else 64  # 224-px models are fully convolutional
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 7)


def test_resnet18_at_224():
    with torch.no_grad():
        assert build_model("resnet18").eval()(torch.randn(1, 3, 224, 224)).shape == (1, 10)


def test_unknown_model_lists_valid_names():
    with pytest.raises(UnknownNameError, match=r"valid: .*resnet20"):
        build_model("resnet999")


@pytest.mark.parametrize("ref", ["nocolon.py", "a:b:c", ":fn", "mod:"])
def test_malformed_reference(ref):
    with pytest.raises(ConfigError):
        build_model(ref if ":" in ref else ref + ":")


def test_user_model_from_file_path():
    model = build_model(TINY_REF, num_classes=4)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 4)


def test_user_model_from_module():
    model = build_model("tests.fixtures.tiny_cnn:tiny_cnn")
    assert isinstance(model, torch.nn.Module)


def test_user_function_not_returning_module(tmp_path):
    f = tmp_path / "bad.py"
    f.write_text("def make():\n    return 42\n")
    with pytest.raises(ConfigError, match=r"not an nn\.Module"):
        build_model(f"{f}:make")


def test_missing_file_and_attribute(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        build_model(f"{tmp_path}/nope.py:f")
    f = tmp_path / "m.py"
    f.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="no callable"):
        build_model(f"{f}:make")


def test_checkpoint_round_trip_and_errors(tmp_path):
    model = build_model("resnet20")
    path = tmp_path / "ok.pt"
    torch.save(model.state_dict(), path)
    other = build_model("resnet20")
    load_checkpoint(other, path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    with pytest.raises(ConfigError, match="not found"):
        load_checkpoint(other, tmp_path / "missing.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ConfigError, match="not a state dict"):
        load_checkpoint(other, tmp_path / "list.pt")
    torch.save(build_model("resnet56").state_dict(), tmp_path / "wrong.pt")
    with pytest.raises(ConfigError, match="does not fit"):
        load_checkpoint(other, tmp_path / "wrong.pt")


def test_checkpoint_with_pickled_object_is_refused(tmp_path):
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "evil.pt")  # a whole pickled module, not tensors
    with pytest.raises(ConfigError, match="weights_only"):
        load_checkpoint(build_model("resnet20"), tmp_path / "evil.pt")
