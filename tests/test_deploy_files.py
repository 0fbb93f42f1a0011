"""The deployment files against the code they deploy: Dockerfile, deploy/docker-compose.yml, deploy/.env.example,
deploy/nginx/nginx.conf, deploy/k8s/ and the Triton production config.

Checked: every command a container runs is a real `poseloop` CLI command with real options; every POSELOOP_*
variable is a Settings field (or one of a few documented others) and the values validate; every mounted file,
named volume, PVC, ConfigMap, Secret key, probe port and Service target exists; the Triton config generated for the
NGC image matches a real ONNX export's I/O. Nothing here needs Docker or a cluster: `docker compose config` and
`kubectl kustomize` run only when those tools are installed (neither is on the CI box).
"""

from __future__ import annotations

import http.server
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from dotenv import dotenv_values

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
ENV_EXAMPLE = DEPLOY / ".env.example"
K8S = DEPLOY / "k8s"
HEALTHCHECK = DEPLOY / "docker" / "healthcheck.py"

# POSELOOP_* variables that are not continual.settings.Settings fields but are read elsewhere (keep this small).
NON_SETTINGS = {
    "POSELOOP_TAG",  # compose: image tag
    "POSELOOP_DATA",  # training.datasets.default_data_root
    "POSELOOP_CACHE",  # models.pretrained.cache_dir
}


def test_non_settings_variables_are_the_documented_others():
    from continual.settings import OTHER_VARIABLES

    assert set(OTHER_VARIABLES) >= NON_SETTINGS, "Settings would reject a variable the deployment sets"


# Settings fields the deployment relies on that the Python side is adding with this issue.
NEW_FIELDS = {"triton_runtime", "triton_kind", "triton_control"}
COMPOSE_SERVICES = {"redis", "triton", "triton-sync", "api", "worker", "ingest-worker", "beat", "flower", "lb"}
K8S_IMAGES = ("poseloop:", "poseloop-gpu:", "nvcr.io/nvidia/tritonserver:", "redis:7")
POSELOOP_IMAGES = ("poseloop:", "poseloop-gpu:")
WORKLOADS = ("Deployment", "StatefulSet")


# ---------------------------------------------------------------- helpers


def settings_fields() -> set[str]:
    from continual.settings import flat_fields

    return set(flat_fields())


def env_names(text: str) -> dict[str, bool]:
    """POSELOOP_*/other assignments in an env file: name -> active (False when the line is commented out)."""
    names = {}
    for line in text.splitlines():
        m = re.match(r"^(#\s*)?([A-Z][A-Z0-9_]*)=", line)
        if m:
            names[m.group(2)] = m.group(1) is None
    return names


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose-style ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error} substitution, recursively."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
        current = env.get(name)
        if op in (":-", "-"):
            return current if current or (op == "-" and current is not None) else arg
        if op in (":?", "?"):
            if not current:
                raise AssertionError(f"${{{name}}} is required ({arg}) but .env.example does not set it")
            return current
        return current or ""

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?])?([^}]*)\}", one, value)


def cli() -> dict[str, Any]:
    """The `poseloop` typer app's commands (name -> click.Command)."""
    import typer

    from poseloop.cli import app

    return dict(typer.main.get_command(app).commands)


def argv_problems(argv: list[str], where: str) -> list[str]:
    """Why `poseloop <argv>` would not run: unknown command, or an --option the command does not have."""
    commands = cli()
    if not argv:
        return [f"{where}: no command (the image's CMD is not meant for this role)"]
    command = commands.get(argv[0])
    if command is None:
        return [f"{where}: `poseloop {argv[0]}` is not a CLI command (have: {sorted(commands)})"]
    options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    return [
        f"{where}: `poseloop {argv[0]}` has no option {token.split('=')[0]} (has: {sorted(options)})"
        for token in argv[1:]
        if token.startswith("--") and token.split("=")[0] not in options
    ]


def settings_problems(env: dict[str, str], where: str) -> list[str]:
    """Validate a POSELOOP_* environment through Settings (as the processes would read it)."""
    from pydantic import ValidationError

    from continual.settings import Settings

    saved = {k: v for k, v in os.environ.items() if k.startswith("POSELOOP_")}
    try:
        for k in saved:
            del os.environ[k]
        os.environ.update({k: str(v) for k, v in env.items() if k.startswith("POSELOOP_")})
        Settings()
    except ValidationError as err:
        return [f"{where}: {err}"]
    finally:
        for k in [k for k in os.environ if k.startswith("POSELOOP_")]:
            del os.environ[k]
        os.environ.update(saved)
    return []


def unknown_poseloop_vars(names, where: str) -> list[str]:
    known = {f"POSELOOP_{f.upper()}" for f in settings_fields() | NEW_FIELDS} | NON_SETTINGS
    return [
        f"{where}: {n} is neither a Settings field nor in NON_SETTINGS"
        for n in names
        if n.startswith("POSELOOP_") and n not in known
    ]


@pytest.fixture(scope="module")
def example_env() -> dict[str, str]:
    return {k: v for k, v in dotenv_values(ENV_EXAMPLE).items() if v is not None}


@pytest.fixture(scope="module")
def raw_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def compose(raw_compose, example_env) -> dict[str, Any]:
    return interpolate(raw_compose, example_env)


def poseloop_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services that run the PoseLoop image through its ENTRYPOINT (not the volume-ownership init)."""
    return {
        name: svc
        for name, svc in compose["services"].items()
        if str(svc.get("image", "")).startswith(POSELOOP_IMAGES) and "entrypoint" not in svc
    }


def command_argv(command: Any) -> list[str]:
    return command.split() if isinstance(command, str) else [str(c) for c in command or []]


def gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    devices = (((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []
    return [
        d
        for d in devices
        if d.get("driver") == "nvidia"
        and "gpu" in d.get("capabilities", [])
        and (d.get("count") == "all" or int(d.get("count", 0)) >= 1 or d.get("device_ids"))
    ]


def restricted(flag: str, argv: list[str]) -> tuple[set[str], str, str] | None:
    """(apis, header, value) of a Triton `--<flag>=<api>[,<api>...]:<header>=<value>` argument."""
    for arg in argv:
        if arg.startswith(f"--{flag}="):
            m = re.fullmatch(rf"--{flag}=([a-z\-,]+):([A-Za-z0-9\-]+)=(.+)", arg)
            assert m, f"{arg!r} is not the <api>[,<api>...]:<header>=<value> form Triton 2.51 accepts"
            return set(m.group(1).split(",")), m.group(2), m.group(3)
    return None


# ---------------------------------------------------------------- docker compose


def test_compose_config_renders_with_docker_compose(tmp_path) -> None:
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("`docker compose` is not installed here; the structural checks below still run")
    shutil.copytree(DEPLOY, tmp_path / "deploy", ignore=shutil.ignore_patterns(".env"))
    shutil.copy(ENV_EXAMPLE, tmp_path / "deploy" / ".env")
    result = subprocess.run(
        [docker, "compose", "-f", str(tmp_path / "deploy" / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_compose_file_matches_the_compose_spec_schema() -> None:
    tool = shutil.which("check-jsonschema")
    if not tool:
        pytest.skip("check-jsonschema is not installed (pip install check-jsonschema)")
    result = subprocess.run(
        [tool, "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_services_replicas_and_load_balancer(compose) -> None:
    services = compose["services"]
    assert set(services) >= COMPOSE_SERVICES, COMPOSE_SERVICES - set(services)
    assert services["api"]["deploy"]["replicas"] >= 2
    assert not services["api"].get("ports"), "API replicas must not bind a fixed host port; `lb` publishes one"
    assert services["beat"]["deploy"]["replicas"] == 1
    lb = services["lb"]
    assert lb["image"].startswith("nginx:") and any(p.endswith(":8080") for p in lb["ports"])
    conf_mounts = [v.split(":")[0] for v in lb["volumes"] if v.split(":")[1] == "/etc/nginx/nginx.conf"]
    conf = (DEPLOY / conf_mounts[0]).read_text()
    # Docker's DNS, re-resolved at run time, so every replica (and a scaled-up one) gets traffic
    assert "resolver 127.0.0.11" in conf and re.search(r"set \$(\w+) api:8080;", conf)
    variable = re.search(r"set \$(\w+) api:8080;", conf).group(1)
    assert f"proxy_pass http://${variable};" in conf
    assert "listen 8080;" in conf
    max_body = int(re.search(r"client_max_body_size (\d+)m;", conf).group(1)) * 1024 * 1024
    from continual.settings import setting_default

    assert max_body >= setting_default("max_upload_bytes"), "nginx would cut off allowed uploads"


def test_compose_gpu_services_reserve_a_gpu(compose) -> None:
    for name in ("triton", "worker"):
        assert gpu_devices(compose["services"][name]), f"{name} reserves no NVIDIA GPU"
    assert compose["services"]["worker"]["build"]["target"] == "gpu"
    assert compose["services"]["worker"]["image"].startswith("poseloop-gpu:")
    for name, service in poseloop_services(compose).items():
        if name != "worker":
            assert service["build"]["target"] == "cpu" and service["image"].startswith("poseloop:"), name


def test_compose_triton_is_explicit_and_restricted(compose, example_env) -> None:
    from serving.triton.server import REPOSITORY_SECRET_HEADER, RESTRICTED_APIS

    triton = compose["services"]["triton"]
    image = triton["image"]
    assert image.startswith("nvcr.io/nvidia/tritonserver:") and image.endswith("-py3"), image
    argv = command_argv(triton["command"])
    assert argv[0] == "tritonserver"
    assert "--model-control-mode=explicit" in argv and "--model-repository=/models" in argv
    secret = example_env["POSELOOP_TRITON_REPOSITORY_SECRET"]
    for flag in ("http-restricted-api", "grpc-restricted-protocol"):
        spec = restricted(flag, argv)
        assert spec is not None, f"--{flag} missing: the repository API would be open"
        assert spec == (set(RESTRICTED_APIS), REPOSITORY_SECRET_HEADER, secret), spec
    assert "/v2/health/live" in " ".join(command_argv(triton["healthcheck"]["test"]))
    repo_volume = next(v.split(":")[0] for v in triton["volumes"] if v.split(":")[1] == "/models")
    sync = compose["services"]["triton-sync"]
    assert f"{repo_volume}:/models" in sync["volumes"], "triton-sync must write the repository Triton reads"
    env = sync["environment"]
    assert env["POSELOOP_TRITON_REPOSITORY"] == "/models" and env["POSELOOP_TRITON_RUNTIME"] == "onnxruntime"
    assert env["POSELOOP_TRITON_KIND"] == "KIND_GPU" and env["POSELOOP_TRITON_URL"] == "triton:8000"
    assert str(env["POSELOOP_TRITON_CONTROL"]).lower() == "true"
    assert str(compose["services"]["api"]["environment"]["POSELOOP_TRITON_CONTROL"]).lower() == "false"


def test_compose_redis_uses_the_repository_conf(compose) -> None:
    redis = compose["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    mounts = {v.split(":")[1]: v.split(":")[0] for v in redis["volumes"]}
    conf_target = next(t for t in mounts if t.endswith(".conf"))
    assert (DEPLOY / mounts[conf_target]).resolve() == (DEPLOY / "redis" / "redis.conf").resolve()
    assert conf_target in command_argv(redis["command"]), "redis-server is not started with the mounted conf"
    directives = redis_directives((DEPLOY / "redis" / "redis.conf").read_text())
    assert directives["appendonly"] == "yes" and directives["maxmemory-policy"] == "noeviction"
    assert mounts[directives["dir"]] in compose["volumes"], "the AOF directory is not on a named volume"
    assert "redis-cli" in command_argv(redis["healthcheck"]["test"])


def test_compose_volumes_are_declared_and_bind_mounts_exist(raw_compose) -> None:
    declared = set(raw_compose.get("volumes") or {})
    used = set()
    for name, service in raw_compose["services"].items():
        for spec in service.get("volumes", []):
            source = spec.split(":")[0] if isinstance(spec, str) else spec.get("source", "")
            if "${" in source:  # operator-supplied host path (DATASETS_DIR)
                continue
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name}: bind source {source} does not exist"
            else:
                used.add(source)
        for env_file in [service["env_file"]] if isinstance(service.get("env_file"), str) else []:
            assert env_file == ".env", f"{name}: env_file {env_file} (the documented file is deploy/.env)"
    assert used <= declared, f"undeclared named volumes: {used - declared}"
    assert {"redis-data", "registry", "data", "model-repository"} <= declared


def test_compose_commands_are_cli_commands(compose) -> None:
    problems = []
    for name, service in poseloop_services(compose).items():
        problems += argv_problems(command_argv(service.get("command")), f"compose {name}")
    expected = {
        "api": ["serve", "--host", "0.0.0.0", "--port", "8080"],
        "worker": ["worker"],
        "ingest-worker": ["worker", "--queue", "ingest"],
        "beat": ["beat"],
        "triton-sync": ["triton-sync"],
    }
    for name, argv in expected.items():
        assert command_argv(compose["services"][name]["command"]) == argv, name
    assert not problems, "\n".join(problems)


def test_compose_service_environments_validate(compose, example_env) -> None:
    problems = []
    for name, service in poseloop_services(compose).items():
        assert service.get("env_file") == ".env", f"{name} does not read deploy/.env"
        env = {**example_env, **{k: str(v) for k, v in (service.get("environment") or {}).items()}}
        problems += unknown_poseloop_vars(service.get("environment") or {}, f"compose {name}")
        problems += settings_problems(env, f"compose {name}")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- .env.example


def test_env_example_documents_every_setting() -> None:
    text = ENV_EXAMPLE.read_text()
    names = env_names(text)
    missing = sorted(
        f"POSELOOP_{f.upper()}" for f in settings_fields() | NEW_FIELDS if f"POSELOOP_{f.upper()}" not in names
    )
    assert not missing, f"not in .env.example: {missing}"
    assert not unknown_poseloop_vars(names, ".env.example")
    assert {"TRITON_TAG", "POSELOOP_TAG", "FLOWER_BASIC_AUTH", "LB_PORT"} <= set(names)
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^(#\s*)?[A-Z][A-Z0-9_]*=", line):
            above = lines[i - 1]
            assert above.startswith("#") and "default" in above.lower(), f"no '# ... Default: ...' above {line!r}"


def test_env_example_loads_through_settings(example_env) -> None:
    from continual.settings import MIN_TOKEN_LENGTH, Settings

    assert not settings_problems(example_env, ".env.example")
    settings = Settings(_env_file=ENV_EXAMPLE)  # the pydantic-settings dotenv path itself
    assert not settings.api.dev and settings.api.tokens, "production example: real tokens, no dev mode"
    assert all(len(token) >= MIN_TOKEN_LENGTH for token in settings.api.tokens)
    assert {"infer", "upload", "ops"} <= {role for spec in settings.api.tokens.values() for role in spec.roles}
    assert settings.inference.backend == "triton" and settings.loop.broker_url == "redis://redis:6379/0"
    assert settings.retrain.config == Path("/app/configs/ssl/continual.yaml")
    assert (ROOT / settings.retrain.config.relative_to("/app")).exists(), "the image's retrain config is missing"
    bundled = settings.registry.bootstrap_model.relative_to("/app")
    assert bundled.parts[0] == "artifacts", "the bootstrap model must be the one the Dockerfile copies"


# ---------------------------------------------------------------- Dockerfile


def dockerfile_stages() -> dict[str, list[str]]:
    stages, current = {}, None
    for line in re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text()).splitlines():
        m = re.match(r"^FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if m:
            current = m.group(1) or f"stage{len(stages)}"
            stages[current] = []
        elif current and line.strip() and not line.lstrip().startswith("#"):
            stages[current].append(line.strip())
    return stages


def test_dockerfile_targets_user_healthcheck_and_sources() -> None:
    stages = dockerfile_stages()
    assert list(stages)[-1] == "cpu", "the default target (last stage) must be the CPU image"
    assert {"cpu", "gpu"} <= set(stages)
    text = (ROOT / "Dockerfile").read_text()
    for target in ("cpu", "gpu"):
        assert "USER 1000:1000" in stages[target], f"{target} does not run as uid 1000"
    runtime = "\n".join(stages["runtime"])
    assert 'ENTRYPOINT ["poseloop"]' in runtime and "useradd" in runtime and "--uid 1000" in runtime
    healthcheck = re.search(r"HEALTHCHECK .*CMD (\[.*\])", runtime).group(1)
    assert "/app/deploy/docker/healthcheck.py" in healthcheck and HEALTHCHECK.exists()
    gpu_build = "\n".join(stages["build-gpu"])
    assert "onnxruntime-gpu" in gpu_build and "pip uninstall -y onnxruntime" in gpu_build
    assert re.search(r"TORCH_CUDA_INDEX_URL=https://download\.pytorch\.org/whl/cu12\d", gpu_build)
    assert "whl/cpu" in "\n".join(stages["build-cpu"])
    for build in ("build-cpu", "build-gpu"):
        assert "poseloop weights fetch --quiet" in "\n".join(stages[build])
    copied = re.search(r"cp -a (.+?) /app/", "\n".join(stages["source"])).group(1).split()
    pyproject = (ROOT / "pyproject.toml").read_text()
    packages = re.search(r"include = \[(.*?)\]", pyproject).group(1).replace('"', "").replace("*", "").split(", ")
    assert set(packages) | {"pyproject.toml", "README.md", "configs", "deploy"} <= set(copied)
    for path in copied:
        assert (ROOT / path).exists(), f"the Dockerfile copies {path}, which is not in the repository"
    assert "mkdir -p /app/artifacts" in text and "if [ -d artifacts ]" in text  # builds with or without it
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", "runs", ".git", "**/__pycache__", ".pytest_cache", ".hypothesis", "deploy/.env"} <= ignored
    assert "docs" in ignored or "docs/results/runs" in ignored
    assert not ignored & set(copied), f"the Dockerfile copies paths .dockerignore drops: {ignored & set(copied)}"


def test_healthcheck_script(tmp_path, monkeypatch) -> None:
    spec = importlib.util.spec_from_file_location("poseloop_healthcheck", HEALTHCHECK)
    health = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(health)

    def proc(*argvs: list[str]) -> Path:
        root = tmp_path / f"proc{len(list(tmp_path.iterdir()))}"
        for pid, argv in enumerate(argvs, start=1):
            (root / str(pid)).mkdir(parents=True)
            (root / str(pid) / "cmdline").write_bytes("\0".join(argv).encode() + b"\0")
        return root

    worker = ["/opt/venv/bin/python", "-m", "celery", "-A", "poseloop.worker.tasks", "worker", "-Q", "train"]
    assert health.serve_port(proc(["docker-init", "--"], worker)) is None
    assert (
        health.serve_port(
            proc(["/opt/venv/bin/python", "/opt/venv/bin/poseloop", "serve", "--host", "0.0.0.0", "--port", "9001"])
        )
        == 9001
    )
    assert health.serve_port(proc(["python", "-m", "poseloop.cli", "serve", "--port=9002"])) == 9002
    monkeypatch.setenv("POSELOOP_PORT", "9003")
    assert health.serve_port(proc(["/opt/venv/bin/poseloop", "serve"])) == 9003

    monkeypatch.setattr(health, "serve_port", lambda: None)
    assert health.main() == 0  # worker / beat / triton-sync containers pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setattr(health, "serve_port", lambda: closed)
    assert health.main() == 1  # an API that does not answer is unhealthy

    class Healthz(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Healthz)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(health, "serve_port", lambda: server.server_address[1])
        assert health.main() == 0
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------- Kubernetes


@pytest.fixture(scope="module")
def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


@pytest.fixture(scope="module")
def k8s_docs(kustomization) -> list[dict[str, Any]]:
    docs = []
    for resource in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / resource).read_text()) if d is not None]
    return docs


def by_kind(docs, kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_specs(docs) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d["spec"]["template"] for d in docs if d["kind"] in WORKLOADS}


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return pod["spec"].get("initContainers", []) + pod["spec"]["containers"]


def test_k8s_documents_parse_and_kustomization_lists_them(kustomization, k8s_docs) -> None:
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.y*ml")} - {"kustomization.yaml"}
    assert listed == on_disk, f"kustomization resources {sorted(listed)} vs files {sorted(on_disk)}"
    for doc in k8s_docs:
        assert doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name"), doc
    assert kustomization["namespace"] == "poseloop" and "Namespace" in {d["kind"] for d in k8s_docs}
    image_names = {i["name"] for i in kustomization["images"]}
    for pod in pod_specs(k8s_docs).values():
        for c in containers(pod):
            assert c["image"].rsplit(":", 1)[0] in image_names or c["image"].startswith("redis:"), c["image"]


def test_kubectl_kustomize_builds(k8s_docs) -> None:
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl is not installed")
    result = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    built = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert len(built) == len(k8s_docs)
    for doc in built:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "poseloop", doc["metadata"]


def test_k8s_images_and_commands(k8s_docs) -> None:
    problems = []
    for workload, pod in pod_specs(k8s_docs).items():
        for c in containers(pod):
            image = c["image"]
            assert image.startswith(K8S_IMAGES), f"{workload}/{c['name']}: unexpected image {image}"
            if image.startswith("nvcr.io/"):
                assert image.endswith("-py3")
            if not image.startswith(POSELOOP_IMAGES):
                continue
            command = c.get("command") or []
            assert command in ([], ["poseloop"]), f"{workload}/{c['name']}: the ENTRYPOINT is poseloop"
            problems += argv_problems([str(a) for a in c.get("args", [])], f"k8s {workload}/{c['name']}")
    assert not problems, "\n".join(problems)


def test_k8s_probes_target_declared_ports(k8s_docs) -> None:
    for workload, pod in pod_specs(k8s_docs).items():
        pod_ports = {p["containerPort"] for c in containers(pod) for p in c.get("ports", [])}
        for c in containers(pod):
            names = {p["name"] for p in c.get("ports", []) if "name" in p}
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = c.get(kind)
                if not probe or "exec" in probe:
                    continue
                port = (probe.get("httpGet") or probe.get("tcpSocket") or probe.get("grpc"))["port"]
                ok = port in names if isinstance(port, str) else port in pod_ports
                assert ok, f"{workload}/{c['name']} {kind} port {port!r} is not a declared container port"
    api = next(c for c in containers(pod_specs(k8s_docs)["poseloop-api"]) if c["name"] == "api")
    http_port = {p["name"]: p["containerPort"] for p in api["ports"]}["http"]
    assert http_port == 8080 and api["args"][-2:] == ["--port", "8080"]
    assert (api["readinessProbe"]["httpGet"]["path"], api["livenessProbe"]["httpGet"]["path"]) == (
        "/readyz",
        "/healthz",
    )
    triton = next(c for c in containers(pod_specs(k8s_docs)["poseloop-triton"]) if c["name"] == "triton")
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"


def test_k8s_services_select_pods_with_their_target_ports(k8s_docs) -> None:
    pods = pod_specs(k8s_docs)
    for name, service in by_kind(k8s_docs, "Service").items():
        selector = service["spec"]["selector"]
        matched = [pod for pod in pods.values() if selector.items() <= pod["metadata"]["labels"].items()]
        assert matched, f"Service {name} selects no pods"
        ports = [p for pod in matched for c in containers(pod) for p in c.get("ports", [])]
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert any(p.get("name") == target or p["containerPort"] == target for p in ports), (
                f"Service {name} targetPort {target!r} matches no container port"
            )
    for workload, pod in pods.items():  # selectors match their own templates
        spec = next(d for d in k8s_docs if d["metadata"]["name"] == workload)["spec"]
        assert spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items(), workload


def test_k8s_replicas_gpus_hpa_and_security(k8s_docs) -> None:
    deployments = by_kind(k8s_docs, "Deployment")
    beat = deployments["poseloop-beat"]["spec"]
    assert beat["replicas"] == 1 and beat["strategy"]["type"] == "Recreate"
    assert deployments["poseloop-api"]["spec"]["replicas"] >= 2
    for name in ("poseloop-worker", "poseloop-triton"):
        gpu = [
            c
            for c in containers(deployments[name]["spec"]["template"])
            if int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) >= 1
        ]
        assert gpu, f"{name} requests no GPU"
    worker = containers(deployments["poseloop-worker"]["spec"]["template"])[0]
    assert worker["image"].startswith("poseloop-gpu:")
    assert {e["name"]: e.get("value") for e in worker["env"]}["POSELOOP_TRAIN_NPROC"] == "1"
    for hpa in by_kind(k8s_docs, "HorizontalPodAutoscaler").values():
        assert hpa["apiVersion"] == "autoscaling/v2"
        ref = hpa["spec"]["scaleTargetRef"]
        assert ref["kind"] == "Deployment" and ref["name"] in deployments, ref
        target = containers(deployments[ref["name"]]["spec"]["template"])
        assert all("cpu" in c["resources"]["requests"] for c in target), "CPU utilisation needs CPU requests"
        assert hpa["spec"]["minReplicas"] >= 2
    for workload, pod in pod_specs(k8s_docs).items():
        for c in containers(pod):
            if c["image"].startswith(POSELOOP_IMAGES):
                security = {**pod["spec"].get("securityContext", {}), **c.get("securityContext", {})}
                assert security.get("runAsNonRoot") is True and security.get("runAsUser") == 1000, (
                    f"{workload}/{c['name']} is not pinned to the non-root uid 1000"
                )


def test_k8s_referenced_objects_exist(k8s_docs) -> None:
    pvcs, config_maps, secrets = (by_kind(k8s_docs, k) for k in ("PersistentVolumeClaim", "ConfigMap", "Secret"))
    for workload, pod in pod_specs(k8s_docs).items():
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        templates = next(d for d in k8s_docs if d["metadata"]["name"] == workload)["spec"].get(
            "volumeClaimTemplates", []
        )
        for v in volumes.values():
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in pvcs, f"{workload}: PVC {v} missing"
            if "configMap" in v:
                assert v["configMap"]["name"] in config_maps, f"{workload}: ConfigMap {v} missing"
            if "secret" in v:
                assert v["secret"]["secretName"] in secrets, f"{workload}: Secret {v} missing"
        mountable = set(volumes) | {t["metadata"]["name"] for t in templates}
        for c in containers(pod):
            for mount in c.get("volumeMounts", []):
                assert mount["name"] in mountable, f"{workload}/{c['name']}: volume {mount['name']} undefined"
            for source in c.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in config_maps
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets
            for env in c.get("env", []):
                ref = env.get("valueFrom") or {}
                if "secretKeyRef" in ref:
                    secret = secrets[ref["secretKeyRef"]["name"]]
                    assert ref["secretKeyRef"]["key"] in secret.get("stringData", secret.get("data", {}))
                if "configMapKeyRef" in ref:
                    assert ref["configMapKeyRef"]["key"] in config_maps[ref["configMapKeyRef"]["name"]]["data"]
            defined = {e["name"] for e in c.get("env", [])}
            for arg in c.get("command", []) + c.get("args", []):
                for var in re.findall(r"\$\(([A-Z_]+)\)", str(arg)):
                    assert var in defined, f"{workload}/{c['name']}: $({var}) is not in the container's env"
    for pvc in pvcs.values():
        assert pvc["spec"]["accessModes"] and pvc["spec"]["resources"]["requests"]["storage"]
    assert pvcs["poseloop-registry"]["spec"]["accessModes"] == ["ReadWriteMany"], "every Triton pod reads it"


def test_k8s_triton_pod_has_the_sync_sidecar(k8s_docs) -> None:
    from serving.triton.server import REPOSITORY_SECRET_HEADER, RESTRICTED_APIS

    pod = pod_specs(k8s_docs)["poseloop-triton"]
    by_name = {c["name"]: c for c in containers(pod)}
    triton, sync = by_name["triton"], by_name["triton-sync"]
    argv = triton.get("command", []) + triton["args"]
    assert argv[0] == "tritonserver" and "--model-control-mode=explicit" in argv
    for flag in ("http-restricted-api", "grpc-restricted-protocol"):
        assert restricted(flag, argv) == (
            set(RESTRICTED_APIS),
            REPOSITORY_SECRET_HEADER,
            "$(POSELOOP_TRITON_REPOSITORY_SECRET)",
        ), flag
    repository = next(a.split("=", 1)[1] for a in argv if a.startswith("--model-repository="))
    triton_mounts = {m["mountPath"]: m["name"] for m in triton["volumeMounts"]}
    sync_mounts = {m["mountPath"]: m["name"] for m in sync["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in sync["env"]}
    assert sync_mounts[env["POSELOOP_TRITON_REPOSITORY"]] == triton_mounts[repository], "not the same repository"
    assert env["POSELOOP_TRITON_URL"] == "127.0.0.1:8000" and env["POSELOOP_TRITON_GRPC_URL"] == "127.0.0.1:8001"
    assert (env["POSELOOP_TRITON_RUNTIME"], env["POSELOOP_TRITON_KIND"]) == ("onnxruntime", "KIND_GPU")
    config = by_kind(k8s_docs, "ConfigMap")["poseloop-config"]["data"]
    assert sync_mounts[config["POSELOOP_REGISTRY_DIR"]] == "registry"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["registry"]["persistentVolumeClaim"]["claimName"] == "poseloop-registry"
    ports = {p["containerPort"] for p in triton["ports"]}
    assert {8000, 8001, 8002} <= ports
    model_probe = sync["readinessProbe"]["httpGet"]
    assert model_probe["path"] == f"/v2/models/{config['POSELOOP_TRITON_MODEL']}/ready"


def test_k8s_settings_values_validate(k8s_docs) -> None:
    config = by_kind(k8s_docs, "ConfigMap")["poseloop-config"]["data"]
    secret = by_kind(k8s_docs, "Secret")["poseloop-secrets"]["stringData"]
    problems = unknown_poseloop_vars(list(config) + list(secret), "k8s config/secret")
    for workload, pod in pod_specs(k8s_docs).items():
        for c in containers(pod):
            if c["image"].startswith(POSELOOP_IMAGES):
                env = {e["name"]: e.get("value", "") for e in c.get("env", []) if "value" in e}
                problems += unknown_poseloop_vars(env, f"k8s {workload}/{c['name']}")
                problems += settings_problems({**config, **secret, **env}, f"k8s {workload}/{c['name']}")
    assert not problems, "\n".join(problems)
    api = containers(pod_specs(k8s_docs)["poseloop-api"])[0]
    assert {e["name"]: e.get("value") for e in api["env"]}["POSELOOP_TRITON_CONTROL"] == "false"


def redis_directives(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out[key] = value.strip()
    return out


def test_k8s_redis_config_matches_the_repository_conf(k8s_docs) -> None:
    config = by_kind(k8s_docs, "ConfigMap")["poseloop-redis-config"]["data"]["redis.conf"]
    assert redis_directives(config) == redis_directives((DEPLOY / "redis" / "redis.conf").read_text())
    redis = by_kind(k8s_docs, "StatefulSet")["poseloop-redis"]
    container = redis["spec"]["template"]["spec"]["containers"][0]
    conf_dir = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "config")
    assert container["command"] == ["redis-server", f"{conf_dir}/redis.conf"]
    data_mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "data")
    assert data_mount == redis_directives(config)["dir"]
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


# ---------------------------------------------------------------- docs


def test_deploy_docs_name_real_commands_and_options() -> None:
    problems = []
    for doc in (ROOT / "docs" / "deploy.md", K8S / "README.md", DEPLOY / "README.md"):
        text = doc.read_text()
        spans = re.findall(r"`poseloop ([a-z][^`]*)`", text)
        spans += re.findall(r"^\s*(?:\$ )?poseloop ([a-z][^#\n]*)", text, re.MULTILINE)  # code-block lines
        for span in spans:
            problems += argv_problems(span.split(), str(doc.relative_to(ROOT)))
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- Triton config vs a real ONNX export


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    """A real (random-init) PoseNet export: mobilenet_v2 + deconv head, 96x128 input, 14 LSP keypoints."""
    import torch

    from models.codec import HeatmapCodec
    from models.export import export_onnx
    from models.geometry import Size
    from models.schemas import LSP14
    from tests.model_fixtures import realistic_posenet

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        codec = HeatmapCodec.for_input(Size(96, 128), 4, sigma=2.0, refinement="quarter")
        return export_onnx(
            realistic_posenet(0),
            codec,
            LSP14,
            tmp_path_factory.mktemp("deploy") / "model.onnx",
            version="deploy-test",
            trained_on="t",
            exporter="torchscript",
        ).path
    finally:
        torch.set_num_threads(threads)


def test_production_triton_config_matches_the_onnx_io(onnx_model, tmp_path) -> None:
    from models.metadata import ModelMetadata
    from serving.triton.repository import config_mismatches, onnxruntime_config, parse_pbtxt, render_pbtxt

    meta = ModelMetadata.from_onnx(onnx_model)
    text = onnxruntime_config("poseloop", meta, versions=["1", "2"], kind="KIND_GPU", instance_count=1)
    assert config_mismatches(text, onnx_model) == []
    config = parse_pbtxt(text)
    assert config["platform"] == "onnxruntime_onnx" and "backend" not in config
    assert config["instance_group"] == [{"kind": "KIND_GPU", "count": 1}]
    assert config["version_policy"] == {"specific": {"versions": ["1", "2"]}}

    wrong = parse_pbtxt(text)
    wrong["output"][0]["dims"][0] = str(int(wrong["output"][0]["dims"][0]) + 3)  # e.g. COCO-17 vs LSP-14
    wrong["input"][0]["dims"] = ["3", "256", "192"]  # another input size
    problems = config_mismatches(render_pbtxt(wrong), onnx_model)
    assert any(p.startswith("output 'heatmaps'") for p in problems), problems
    assert any(p.startswith("input 'input'") for p in problems), problems


def test_bundled_model_matches_the_production_config() -> None:
    bundled = sorted((ROOT / "artifacts").glob("*/v*/model.onnx"))
    if not bundled:
        pytest.skip("no bundled model under artifacts/ yet")
    from models.metadata import ModelMetadata
    from serving.triton.repository import config_mismatches, onnxruntime_config

    for model in bundled:
        text = onnxruntime_config("poseloop", ModelMetadata.from_onnx(model), versions=["1"], kind="KIND_GPU")
        assert config_mismatches(text, model) == [], model


def test_dockerfile_api_target_has_no_torch() -> None:
    """The API image installs the base package only: torch and the training extra stay out of it."""
    stages = dockerfile_stages()
    build = "\n".join(stages["build-api"])
    assert "pip install -e /app" in build and "[train]" not in build and "torch" not in build
    assert "USER 1000:1000" in stages["api"] and "build-api" in "\n".join(stages["api"])
    pyproject = (ROOT / "pyproject.toml").read_text()
    base = re.search(r"^dependencies = \[(.*?)\]", pyproject, re.S | re.M).group(1)
    assert "torch" not in base, "torch must stay in the train extra"
    for build_stage in ("build-cpu", "build-gpu"):
        assert '"/app[train]"' in "\n".join(stages[build_stage])
