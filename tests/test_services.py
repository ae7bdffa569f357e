"""The real services the suite depends on start and answer."""

import docker
import sqlalchemy


def test_podman_runs_the_workspace_image(docker_host):
    client = docker.DockerClient(base_url=docker_host)
    out = client.containers.run(
        "localhost/rwbot-workspace:test",
        ["sh", "-c", "echo hi"],
        network_mode="none",
        remove=True,
    )
    assert out == b"hi\n"


def test_postgres_answers(postgres_url):
    engine = sqlalchemy.create_engine(postgres_url)
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("select 1")).scalar() == 1
