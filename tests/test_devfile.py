"""Devfiles (``bot.devfile``): finding, reading, checking, planning.

Cases: which path ``find`` picks; the documented examples in ``tests/devfiles``
(GitLab's default and example devfiles, devfile.io's) parse to the expected
plan, and the devfile registry's samples are refused with their unsupported
features named; one test per GitLab rule (``gl-`` names, size, parent/projects/
starterProjects, component/command/event kinds, hotReloadCapable, restricted
attributes, variable prefixes, one main container, overrideCommand with
command/args) and per structural rule (schemaVersion, required keys, names,
endpoints, quantities, references between parts, YAML errors), each with its
exact key path and line (also exec ``env``/``group``, apply ``group``, container
``dedicatedPod``/``annotation``, endpoint ``annotation`` and ``gl-`` names,
``dependentProjects``, ``plugin``, duplicate command ids and endpoint names,
endpoint ports shared by two containers, two kinds in one component, apply
naming a missing component); the summary in ``reason``, which names every
unsupported feature (up to a bound); whether the devfile in use changed between
two commits (``change``, for ``sync``), read from real ``git ls-tree`` output;
the plan's image allow-list, resource caps and ignored parts; Kubernetes
quantities; fuzzing: any text, any nested data and any mutation of a valid
devfile raise nothing but DevfileError.
"""

from __future__ import annotations

import copy
import subprocess
from decimal import Decimal
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot import devfile
from bot.devfile import DevfileError, Plan, PostStart, Resources, change, quantity
from bot.errors import PermanentError

SAMPLES = Path(__file__).parent / "devfiles"

MINIMAL = """\
schemaVersion: 2.2.0
components:
  - name: dev
    attributes:
      gl/inject-editor: true
    container:
      image: alpine:3
"""


def sample(name: str) -> str:
    return (SAMPLES / name).read_text()


def doc(text: str) -> str:
    return dedent(text).lstrip("\n")


def problems(text: str) -> list[tuple[str, int | None, bool]]:
    with pytest.raises(DevfileError) as caught:
        devfile.parse(text)
    return [(p.path, p.line, p.unsupported) for p in caught.value.problems]


def plan(text: str, **caps: Any) -> Plan:
    return devfile.workspace_plan(devfile.parse(text), **caps)


# find -------------------------------------------------------------------------


def test_find_prefers_root_yaml_over_yml_and_folder() -> None:
    paths = [".devfile/a.yaml", ".devfile.yml", ".devfile.yaml", "README.md"]
    assert devfile.find(paths) == ".devfile.yaml"


def test_find_takes_root_yml_before_the_folder() -> None:
    assert devfile.find([".devfile/a.yaml", ".devfile.yml"]) == ".devfile.yml"


def test_find_takes_the_first_named_devfile_by_path() -> None:
    paths = [".devfile/web.yml", ".devfile/api.yaml", ".devfile/zz.yaml"]
    assert devfile.find(paths) == ".devfile/api.yaml"


def test_find_ignores_subfolders_other_extensions_and_other_places() -> None:
    paths = [
        ".devfile/sub/x.yaml",
        ".devfile/x.json",
        ".devfile/.yaml",
        "devfile.yaml",
        "sub/.devfile.yaml",
        ".devfile.YAML",
    ]
    assert devfile.find(paths) is None


def test_find_accepts_a_leading_slash() -> None:
    assert devfile.find(["/.devfile/dev.yaml"]) == ".devfile/dev.yaml"


# Documented examples ----------------------------------------------------------


def test_gitlab_default_devfile_runs_its_image_with_a_keep_alive() -> None:
    result = plan(sample("gitlab_default.yaml"))

    assert result.component == "development-environment"
    assert result.image.startswith(
        "registry.gitlab.com/gitlab-org/gitlab-build-images/workspaces/ubuntu-24.04:"
    )
    assert result.override_command is True
    assert result.env == ()
    assert result.resources == Resources()
    assert result.post_start == ()
    assert result.ignored == ()


def test_gitlab_example_plans_the_tooling_container_and_names_the_rest() -> None:
    result = plan(sample("gitlab_example.yaml"))

    assert result.component == "tooling-container"
    assert result.image == (
        "registry.gitlab.com/gitlab-org/remote-development/"
        "gitlab-remote-development-docs/ubuntu:22.04"
    )
    assert result.env == (("KEY", "VALUE"),)
    assert [
        (e.name, e.target_port, e.exposure, e.protocol) for e in result.endpoints
    ] == [("http-3000", 3000, "public", "http")]
    assert result.post_start == (
        PostStart("install-dependencies", "npm install", None, "tooling-container"),
        PostStart(
            "setup-environment",
            "echo 'Setting up development environment'",
            "/home/gitlab-workspaces",
            "tooling-container",
        ),
    )
    assert [(i.path, i.line) for i in result.ignored] == [
        ("components[1]", 16),
        ("commands[2]", 37),
        ("commands[3]", 43),
    ]
    assert "not started" in result.ignored[0].reason


def test_gitlab_example_with_override_command_false_keeps_a_sidecar_entrypoint() -> (
    None
):
    parsed = devfile.parse(sample("gitlab_example_override_command.yaml"))

    database = parsed.component("database-container")
    assert database is not None and database.container is not None
    assert database.container.command == ("echo",)
    assert devfile.override_command(database) is False
    assert devfile.override_command(parsed.main) is True


def test_devfile_io_volume_example_mounts_its_volume() -> None:
    result = plan(sample("devfile_io_volume.yaml"))

    assert result.component == "mycontainer"
    assert [(v.name, v.path, v.size) for v in result.volumes] == [
        ("m2", "/home/user/.m2", "1Gi")
    ]
    assert result.resources == Resources(memory_limit="768Mi")
    assert result.ignored == ()


def test_devfile_io_minimal_example_uses_its_own_command() -> None:
    result = plan(sample("devfile_io_minimal.yaml"))

    assert result.component == "go"
    assert result.command == ("sleep", "infinity")
    assert result.override_command is False


def test_registry_sample_names_every_unsupported_feature() -> None:
    assert problems(sample("registry_python_basic.yaml")) == [
        ("parent", 11, True),
        ("components[0].image", 16, True),
        ("components[1].kubernetes", 30, True),
        ("commands[2].composite", 40, True),
    ]


def test_registry_sample_for_devfile_2_0_is_refused_as_unsupported() -> None:
    found = problems(sample("registry_python_basic_2_0.yaml"))

    assert found[:2] == [("schemaVersion", 1, True), ("starterProjects", 8, True)]
    assert ("commands[0].exec.group", 34, True) in found


# GitLab's rules -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path", "line"),
    [
        (MINIMAL.replace("name: dev", "name: gl-dev"), "components[0].name", 3),
        (
            MINIMAL + "commands:\n  - id: gl-x\n    exec: {component: dev, "
            "commandLine: x}\n",
            "commands[0].id",
            9,
        ),
        (
            MINIMAL + "commands:\n  - id: x\n    exec: {component: dev, "
            "commandLine: x}\nevents:\n  postStart: [x, gl-y]\n",
            "events.postStart[1]",
            12,
        ),
    ],
    ids=["component", "command", "event"],
)
def test_names_must_not_start_with_gl(text: str, path: str, line: int) -> None:
    assert (path, line, False) in problems(text)


def test_devfile_larger_than_3_mb_is_refused() -> None:
    text = MINIMAL + "# " + "x" * (3 * 1024 * 1024) + "\n"
    with pytest.raises(DevfileError) as caught:
        devfile.parse(text)
    assert "larger than 3 MB" in caught.value.reason


@pytest.mark.parametrize("key", ["parent", "projects", "starterProjects"])
def test_parent_and_projects_are_unsupported(key: str) -> None:
    text = MINIMAL + f"{key}:\n  - name: x\n"
    assert problems(text) == [(key, 8, True)]


@pytest.mark.parametrize("kind", ["kubernetes", "openshift", "image", "custom"])
def test_other_component_kinds_are_unsupported(kind: str) -> None:
    text = MINIMAL + f"  - name: other\n    {kind}:\n      uri: x.yaml\n"
    assert problems(text) == [(f"components[1].{kind}", 9, True)]


def test_composite_commands_are_unsupported() -> None:
    text = MINIMAL + "commands:\n  - id: all\n    composite:\n      commands: []\n"
    assert problems(text) == [("commands[0].composite", 10, True)]


@pytest.mark.parametrize("event", ["preStop", "postStop"])
def test_stop_events_are_unsupported(event: str) -> None:
    text = MINIMAL + f"events:\n  {event}: []\n"
    assert problems(text) == [(f"events.{event}", 9, True)]


def test_post_start_may_reference_only_exec_commands() -> None:
    text = MINIMAL + doc("""
        commands:
          - id: prepare
            apply: {component: dev}
        events:
          postStart: [prepare]
        """)
    assert problems(text) == [("events.postStart[0]", 12, False)]


def test_hot_reload_capable_must_be_false() -> None:
    text = MINIMAL + doc("""
        commands:
          - id: run
            exec: {component: dev, commandLine: x, hotReloadCapable: true}
        """)
    assert problems(text) == [("commands[0].exec.hotReloadCapable", 10, True)]


def test_pod_overrides_at_the_root_is_restricted() -> None:
    text = MINIMAL + "attributes:\n  pod-overrides: {spec: {}}\n"
    assert problems(text) == [("attributes.pod-overrides", 9, True)]


@pytest.mark.parametrize("key", ["pod-overrides", "container-overrides"])
def test_overrides_in_components_are_restricted(key: str) -> None:
    text = MINIMAL.replace("gl/inject-editor: true", f"{key}: {{}}")
    assert problems(text) == [(f"components[0].attributes.{key}", 5, True)]


@pytest.mark.parametrize("name", ["gl-x", "gl_x", "GL-x", "GL_x"])
def test_variable_names_must_not_start_with_gl(name: str) -> None:
    assert problems(MINIMAL + f"variables:\n  {name}: v\n") == [
        (f"variables.{name}", 9, False)
    ]


def test_env_names_must_not_start_with_gl() -> None:
    text = MINIMAL + "      env:\n        - {name: gl-token, value: x}\n"
    assert problems(text) == [("components[0].container.env[0].name", 9, False)]


def test_only_one_container_may_get_the_editor() -> None:
    text = MINIMAL + MINIMAL.split("components:\n")[1].replace("dev", "other")
    assert problems(text) == [("components[1].attributes.gl/inject-editor", 8, False)]


def test_main_container_is_the_first_container_without_the_attribute() -> None:
    text = doc("""
        schemaVersion: 2.2.0
        components:
          - name: cache
            volume: {}
          - name: first
            container: {image: a}
          - name: second
            container: {image: b}
        """)
    assert devfile.parse(text).main.name == "first"


def test_command_needs_override_command_false_on_the_editor_container() -> None:
    text = MINIMAL + "      command: [sleep]\n"
    assert problems(text) == [("components[0].container.command", 8, False)]

    allowed = MINIMAL + "      command: [sleep]\n      overrideCommand: false\n"
    assert plan(allowed).command == ("sleep",)


def test_devfile_needs_at_least_one_component() -> None:
    assert problems("schemaVersion: 2.2.0\ncomponents: []\n") == [
        ("components", 2, False)
    ]


# Structure ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "unsupported"),
    [("2.1.0", True), ("2.3.0", True), ("2.2", False), ("latest", False)],
)
def test_schema_version_must_be_2_2(version: str, unsupported: bool) -> None:
    text = MINIMAL.replace("2.2.0", version)
    assert problems(text) == [("schemaVersion", 1, unsupported)]


def test_schema_version_2_2_patch_releases_are_accepted() -> None:
    assert devfile.parse(MINIMAL.replace("2.2.0", "2.2.2")).schema_version == "2.2.2"


def test_missing_schema_version_is_reported_at_the_top() -> None:
    assert problems(MINIMAL.split("\n", 1)[1]) == [("schemaVersion", 1, False)]


def test_container_needs_an_image() -> None:
    text = MINIMAL.replace("      image: alpine:3\n", "      memoryLimit: 1Gi\n")
    assert problems(text) == [("components[0].container.image", 7, False)]


def test_unknown_keys_are_reported_where_they_are() -> None:
    text = MINIMAL + "      imagePullPolicy: Always\n"
    assert problems(text) == [("components[0].container.imagePullPolicy", 8, False)]


def test_component_names_must_be_unique_and_well_formed() -> None:
    text = MINIMAL + "  - name: Dev_1\n    volume: {}\n  - name: dev\n    volume: {}\n"
    assert problems(text) == [
        ("components[1].name", 8, False),
        ("components[2].name", 10, False),
    ]


@pytest.mark.parametrize(
    ("endpoint", "key"),
    [
        ("{name: a-very-long-name-x, targetPort: 80}", "name"),
        ("{name: web, targetPort: 0}", "targetPort"),
        ("{name: web, targetPort: '80'}", "targetPort"),
        ("{name: web, targetPort: 70000}", "targetPort"),
        ("{name: web, targetPort: 80, exposure: world}", "exposure"),
        ("{name: web, targetPort: 80, protocol: ftp}", "protocol"),
    ],
)
def test_endpoints_are_checked(endpoint: str, key: str) -> None:
    text = MINIMAL + f"      endpoints:\n        - {endpoint}\n"
    assert problems(text) == [(f"components[0].container.endpoints[0].{key}", 9, False)]


@pytest.mark.parametrize(
    "value", ["1 Gi", "-1Gi", "1GB", "lots", "'0x10'", "1e", "true"]
)
def test_resources_must_be_kubernetes_quantities(value: str) -> None:
    text = MINIMAL + f"      memoryLimit: {value}\n"
    assert problems(text) == [("components[0].container.memoryLimit", 8, False)]


def test_request_above_limit_is_refused() -> None:
    text = MINIMAL + "      cpuRequest: 2\n      cpuLimit: 500m\n"
    assert problems(text) == [("components[0].container.cpuRequest", 8, False)]


@pytest.mark.parametrize("key", ["env", "group"])
def test_exec_options_beyond_gitlabs_list_are_unsupported(key: str) -> None:
    text = MINIMAL + doc(f"""
        commands:
          - id: run
            exec:
              component: dev
              commandLine: x
              {key}: []
        """)
    assert problems(text) == [(f"commands[0].exec.{key}", 13, True)]


def test_apply_group_is_unsupported() -> None:
    text = MINIMAL + doc("""
        commands:
          - id: prepare
            apply: {component: dev, group: {kind: build}}
        """)
    assert problems(text) == [("commands[0].apply.group", 10, True)]


@pytest.mark.parametrize("key", ["dedicatedPod", "annotation"])
def test_container_keys_beyond_gitlabs_list_are_unsupported(key: str) -> None:
    text = MINIMAL + f"      {key}: {{}}\n"
    assert problems(text) == [(f"components[0].container.{key}", 8, True)]


def test_endpoint_annotation_is_unsupported() -> None:
    endpoint = "{name: web, targetPort: 80, annotation: {a: b}}"
    text = MINIMAL + f"      endpoints:\n        - {endpoint}\n"
    assert problems(text) == [
        ("components[0].container.endpoints[0].annotation", 9, True)
    ]


def test_endpoint_names_must_not_start_with_gl() -> None:
    text = MINIMAL + "      endpoints:\n        - {name: gl-web, targetPort: 80}\n"
    assert problems(text) == [("components[0].container.endpoints[0].name", 9, False)]


def test_dependent_projects_are_unsupported() -> None:
    text = MINIMAL + "dependentProjects:\n  - name: x\n"
    assert problems(text) == [("dependentProjects", 8, True)]


def test_plugin_components_are_unsupported() -> None:
    text = MINIMAL + "  - name: other\n    plugin:\n      uri: x.yaml\n"
    assert problems(text) == [("components[1].plugin", 9, True)]


def test_command_ids_must_be_unique() -> None:
    text = MINIMAL + doc("""
        commands:
          - id: run
            exec: {component: dev, commandLine: a}
          - id: run
            exec: {component: dev, commandLine: b}
        """)
    assert problems(text) == [("commands[1].id", 11, False)]


def test_endpoint_names_must_be_unique_across_containers() -> None:
    text = MINIMAL + (
        "      endpoints:\n"
        "        - {name: web, targetPort: 80}\n"
        "  - name: side\n"
        "    container:\n"
        "      image: alpine:3\n"
        "      endpoints:\n"
        "        - {name: web, targetPort: 81}\n"
    )
    assert problems(text) == [("components[1].container.endpoints[0].name", 14, False)]


def test_two_containers_may_not_share_an_endpoint_port() -> None:
    text = MINIMAL + (
        "      endpoints:\n"
        "        - {name: web, targetPort: 80}\n"
        "        - {name: web-again, targetPort: 80}\n"
        "  - name: side\n"
        "    container:\n"
        "      image: alpine:3\n"
        "      endpoints:\n"
        "        - {name: other, targetPort: 80}\n"
    )
    # One container may use a port twice; another container may not.
    assert problems(text) == [
        ("components[1].container.endpoints[0].targetPort", 15, False)
    ]


def test_a_component_with_two_kinds_is_refused() -> None:
    text = MINIMAL.replace("    container:", "    volume: {}\n    container:")
    assert problems(text) == [("components[0]", 3, False)]


def test_apply_must_name_a_component_of_the_devfile() -> None:
    text = MINIMAL + doc("""
        commands:
          - id: prepare
            apply: {component: nowhere}
        events:
          preStart: [prepare]
        """)
    assert ("commands[0].apply.component", 10, False) in problems(text)


def test_exec_command_must_name_a_container_component() -> None:
    text = MINIMAL + doc("""
          - name: cache
            volume: {}
        commands:
          - id: a
            exec: {component: cache, commandLine: x}
          - id: b
            exec: {component: nowhere, commandLine: x}
        """)
    assert problems(text) == [
        ("commands[0].exec.component", 12, False),
        ("commands[1].exec.component", 14, False),
    ]


def test_events_must_name_existing_commands() -> None:
    text = MINIMAL + "events:\n  preStart: [missing]\n"
    assert problems(text) == [("events.preStart[0]", 9, False)]


def test_volume_mounts_must_name_a_volume_component() -> None:
    text = MINIMAL + "      volumeMounts:\n        - {name: data, path: /data}\n"
    assert problems(text) == [
        ("components[0].container.volumeMounts[0].name", 9, False)
    ]


def test_undefined_variables_are_reported() -> None:
    text = MINIMAL.replace("alpine:3", "'{{registry}}/alpine:3'")
    assert problems(text) == [("components[0].container.image", 7, False)]


def test_reserved_environment_variables_cannot_be_set() -> None:
    text = MINIMAL + "      env:\n        - {name: PROJECTS_ROOT, value: /x}\n"
    assert problems(text) == [("components[0].container.env[0].name", 9, False)]


def test_env_value_must_be_a_string() -> None:
    text = MINIMAL + "      env:\n        - {name: PORT, value: 8080}\n"
    assert problems(text) == [("components[0].container.env[0].value", 9, False)]


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("schemaVersion: 2.2.0\ncomponents: [\n", 3),
        ("a: 1\na: 2\n", 2),
        ("--- 1\n--- 2\n", 2),
        ("\tschemaVersion: 2.2.0\n", 1),
    ],
    ids=["unclosed", "duplicate-key", "two-documents", "tab"],
)
def test_yaml_errors_carry_their_line(text: str, line: int) -> None:
    assert problems(text) == [("", line, False)]


@pytest.mark.parametrize("text", ["", "just text", "- a list\n", "null\n"])
def test_a_devfile_must_be_a_mapping(text: str) -> None:
    assert problems(text) == [("", 1, False)]


def test_alias_bombs_are_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    with pytest.raises(DevfileError) as caught:
        devfile.parse("\n".join(lines) + "\n")
    assert "expands to more than" in caught.value.reason


def test_deep_nesting_is_refused() -> None:
    with pytest.raises(DevfileError):
        devfile.parse("[" * 50_000 + "]" * 50_000)


# reason -------------------------------------------------------------------------


def test_reason_names_the_first_problems_with_line_and_key() -> None:
    text = doc("""
        schemaVersion: 2.1.0
        parent: {id: x}
        components:
          - name: gl-a
            container: {image: a}
          - name: gl-b
            container: {image: b}
        """)
    with pytest.raises(PermanentError) as caught:
        devfile.parse(text)

    assert caught.value.reason == (
        "The devfile cannot be used: "
        "line 1, `schemaVersion`: unsupported: devfile 2.1.0 is not supported by "
        "GitLab Workspaces (use 2.2.0); "
        "line 2, `parent`: unsupported: `parent` is not supported by GitLab "
        "Workspaces; "
        "line 4, `components[0].name`: 'gl-a' must not start with 'gl-'; "
        "and 1 more problem."
    )


def test_reason_names_every_unsupported_feature_past_the_first_problems() -> None:
    with pytest.raises(DevfileError) as caught:
        devfile.parse(sample("registry_python_basic.yaml"))

    # Three in full; the fourth unsupported feature by key and line.
    assert caught.value.reason.endswith(
        "; also unsupported: `commands[2].composite` (line 40)."
    )
    assert "more problem" not in caught.value.reason


def test_reason_counts_mistakes_and_bounds_the_unsupported_names() -> None:
    many = "".join(
        f"  - name: k{i}\n    kubernetes: {{uri: x.yaml}}\n" for i in range(105)
    )
    text = MINIMAL.replace("name: dev", "name: gl-dev") + many + "bogus: 1\n"
    with pytest.raises(DevfileError) as caught:
        devfile.parse(text)
    reason = caught.value.reason

    # gl-dev and two kinds in full, then 103 unsupported, then `bogus`.
    assert "`components[3].kubernetes` (line 13)" in reason
    assert "`components[102].kubernetes`" in reason
    assert "`components[103].kubernetes`" not in reason
    assert reason.endswith(" and 3 more; and 1 more problem.")


# workspace_plan -------------------------------------------------------------------


def test_image_outside_the_allow_list_is_refused() -> None:
    with pytest.raises(DevfileError) as caught:
        plan(MINIMAL, allowed_images=["registry.example.com/*"])

    [problem] = caught.value.problems
    assert (problem.path, problem.line) == ("components[0].container.image", 7)
    assert "alpine:3" in caught.value.reason


def test_image_matching_a_pattern_is_allowed() -> None:
    assert plan(MINIMAL, allowed_images=["docker.io/*", "alpine:*"]).image == "alpine:3"


def test_resources_above_the_caps_are_refused() -> None:
    text = MINIMAL + "      memoryLimit: 8Gi\n      cpuRequest: 4\n"
    with pytest.raises(DevfileError) as caught:
        plan(text, max_memory="4Gi", max_cpu="2")

    assert [(p.path, p.line) for p in caught.value.problems] == [
        ("components[0].container.memoryLimit", 8),
        ("components[0].container.cpuRequest", 9),
    ]


def test_caps_become_the_limits_when_the_devfile_sets_none() -> None:
    text = MINIMAL + "      memoryRequest: 512Mi\n      cpuLimit: 0.5\n"
    assert plan(text, max_memory="4Gi", max_cpu="2").resources == Resources(
        memory_request="512Mi", memory_limit="4Gi", cpu_limit="0.5"
    )


def test_plan_names_apply_commands_pre_start_and_unbound_commands() -> None:
    text = MINIMAL + doc("""
        commands:
          - id: init
            apply: {component: dev}
          - id: test
            exec: {component: dev, commandLine: make test}
        events:
          preStart: [init]
        """)
    ignored = plan(text).ignored

    assert [(i.path, i.line) for i in ignored] == [
        ("commands[0]", 9),
        ("commands[1]", 11),
        ("events.preStart", 14),
    ]


def test_plan_names_unmounted_volumes_and_source_mapping() -> None:
    text = MINIMAL + "      sourceMapping: /src\n  - name: cache\n    volume: {}\n"
    assert [(i.path, i.line) for i in plan(text).ignored] == [
        ("components[1]", 9),
        ("components[0].container.sourceMapping", 8),
    ]


def test_bad_cap_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="quantity"):
        plan(MINIMAL, max_memory="lots")


# quantities ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("512Mi", Decimal(512 * 1024**2)),
        ("1Gi", Decimal(1024**3)),
        ("250m", Decimal("0.25")),
        ("1.5", Decimal("1.5")),
        ("2k", Decimal(2000)),
        ("1e3", Decimal(1000)),
        (".5", Decimal("0.5")),
    ],
)
def test_quantities_parse_to_base_units(text: str, value: Decimal) -> None:
    assert quantity.parse(text) == value


# Fuzzing --------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
trees = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=15), st.integers()), children),
    ),
    max_leaves=30,
)
devfile_keys = st.sampled_from(
    [
        "schemaVersion",
        "components",
        "commands",
        "events",
        "name",
        "container",
        "image",
        "volume",
        "exec",
        "component",
        "commandLine",
        "postStart",
        "endpoints",
        "targetPort",
        "env",
        "attributes",
        "gl/inject-editor",
    ]
)


def parse_or_refuse(text: str) -> None:
    try:
        parsed = devfile.parse(text)
    except DevfileError:
        return
    try:
        devfile.workspace_plan(parsed, allowed_images=["x*"], max_memory="1Gi")
    except DevfileError:
        return


# No deadline: Hypothesis' default (200 ms an example) is a timed assertion,
# and fails on a loaded machine.
@settings(deadline=None)
@given(st.text(max_size=400))
def test_any_text_raises_only_devfile_error(text: str) -> None:
    parse_or_refuse(text)


@settings(deadline=None)
@given(trees)
def test_any_nested_data_raises_only_devfile_error(tree: Any) -> None:
    parse_or_refuse(yaml.safe_dump(tree))


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(sorted(p.name for p in SAMPLES.glob("*.yaml"))),
    st.lists(st.tuples(st.integers(0, 1000), devfile_keys, trees), max_size=4),
)
def test_mutated_samples_raise_only_devfile_error(
    name: str, edits: list[tuple[int, str, Any]]
) -> None:
    tree = copy.deepcopy(yaml.safe_load(sample(name)))
    for choice, key, value in edits:
        node = tree
        while isinstance(node, dict | list) and node and choice % 3:
            items = list(node.values()) if isinstance(node, dict) else node
            child = items[choice % len(items)]
            if not isinstance(child, dict | list):
                break
            node, choice = child, choice // 3
        if isinstance(node, dict):
            node[key] = value
        elif isinstance(node, list):
            node.append(value)
    parse_or_refuse(yaml.safe_dump(tree))


# change (devfile after /workspace sync) -----------------------------------------


def test_changed_sees_a_devfile_added_removed_edited_or_replaced() -> None:
    one = {".devfile.yaml": "b1"}

    assert change.changed({}, one) and change.changed(one, {})
    assert change.changed(one, {".devfile.yaml": "b2"})
    # .devfile.yaml wins over a named devfile, so removing it picks another.
    both = {".devfile.yaml": "b1", ".devfile/dev.yaml": "b3"}
    assert change.changed(both, {".devfile/dev.yaml": "b3"})


def test_changed_ignores_files_the_bot_would_not_pick() -> None:
    before = {".devfile.yaml": "b1", ".devfile/other.yaml": "b2"}
    after = {".devfile.yaml": "b1", ".devfile/other.yaml": "b9", "README": "x"}

    assert not change.changed(before, after)
    assert not change.changed({}, {})


def test_blobs_reads_git_ls_tree_keeping_regular_files_only(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / ".devfile" / "nested").mkdir(parents=True)
    (repo / ".devfile.yaml").write_text(MINIMAL)
    (repo / ".devfile" / "dev.yaml").write_text(MINIMAL)
    (repo / ".devfile" / "nested" / "deep.yaml").write_text(MINIMAL)
    (repo / ".devfile.yml").symlink_to(".devfile.yaml")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "devfiles"], check=True)
    listed = subprocess.run(
        [*git, "ls-tree", "-z", "HEAD", "--", *change.LS_TREE_PATHS],
        check=True,
        capture_output=True,
        text=True,
    ).stdout

    found = change.blobs(listed)

    assert sorted(found) == [".devfile.yaml", ".devfile/dev.yaml"]
    assert all(len(blob) == 40 for blob in found.values())
    # stderr mixed in by the runtime's exec does not hide the first entry.
    assert change.blobs("warning: x\n" + listed) == found
