"""Settings in sections: flat names route to their section, every POSELOOP_* variable is read by something,
and a misspelt one is an error naming the closest valid name."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from continual.settings import OTHER_VARIABLES, Settings, env_names, flat_fields, load_settings


def test_flat_names_route_to_sections(tmp_path) -> None:
    settings = load_settings(registry_dir=tmp_path, triton_url="t:1", keep_versions=3, retrain_iterations=7, dev=True)
    assert settings.registry.dir == tmp_path and settings.registry.keep_versions == 3
    assert settings.triton.url == "t:1" and settings.retrain.iterations == 7 and settings.api.dev


def test_variables_keep_their_deployment_names(monkeypatch) -> None:
    monkeypatch.setenv("POSELOOP_TRITON_URL", "triton:8000")
    monkeypatch.setenv("POSELOOP_KEEP_VERSIONS", "9")
    monkeypatch.setenv("POSELOOP_TRAIN_NPROC", "2")
    monkeypatch.setenv("POSELOOP_LOG_JSON", "true")
    settings = Settings()
    assert settings.triton.url == "triton:8000" and settings.registry.keep_versions == 9
    assert settings.retrain.train_nproc == 2 and settings.log.json_lines
    names = env_names()
    assert {"POSELOOP_REGISTRY_DIR", "POSELOOP_MAX_PIXELS", "POSELOOP_BROKER_URL", "POSELOOP_RETRAIN_LR"} <= set(names)
    assert len(names) == len(flat_fields()), "two settings share a variable"


def test_misspelt_variable_names_the_closest(monkeypatch) -> None:
    monkeypatch.setenv("POSELOOP_REGISTY_DIR", "/x")
    with pytest.raises(ValidationError, match="POSELOOP_REGISTY_DIR.*did you mean POSELOOP_REGISTRY_DIR"):
        Settings()


def test_misspelt_variable_in_env_file(tmp_path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("POSELOOP_MAX_BACH=4\n")
    with pytest.raises(ValidationError, match="POSELOOP_MAX_BACH.*did you mean POSELOOP_MAX_BATCH"):
        load_settings(env_file)


def test_documented_other_variables_are_accepted(monkeypatch) -> None:
    for name in OTHER_VARIABLES:
        monkeypatch.setenv(name, "x")
    Settings()


def test_unknown_flat_override_and_updated_copy(tmp_path) -> None:
    with pytest.raises(ValidationError, match="unknown setting 'triton_ulr'.*triton_url"):
        Settings(triton_ulr="x")
    settings = load_settings(registry_dir=tmp_path)
    changed = settings.updated(triton_control=False, max_batch=3)
    assert not changed.triton.control and changed.inference.max_batch == 3 and settings.inference.max_batch == 16
    assert changed.registry == settings.registry
    with pytest.raises(ValidationError):
        settings.updated(max_batch=0)  # the copy is validated like the original
    with pytest.raises(ValueError, match="unknown setting"):
        settings.updated(max_bach=3)
