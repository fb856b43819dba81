"""Unit tests of docker_api, the pure part of the engine, on the build machine's CPython
(`python3 -m unittest` here; build.sh runs them first). They mirror the tests of
engines-wasm/docker-api/src/api.rs, so both engines translate alike."""

import enum
import unittest
from types import SimpleNamespace as NS

import docker_api as api


class MountKind(enum.Enum):
    # Same member names as the generated binding's enum.
    BIND = 0
    VOLUME = 1
    TMPFS = 2


def kv(key, value):
    return NS(key=key, value=value)


def spec():
    return NS(
        name="drp-ctx-1234",
        image="foo:1",
        network="host",
        entrypoint=None,
        env=[kv("RS_UUID", "1234"), kv("PATH", "/bin")],
        labels=[kv("drp.machine", "1234"), kv("drp.spec", "abc")],
        mounts=[],
        resources=NS(memory=None, memory_swap=None, cpus=None, pids_limit=None, shm_size=None),
        security=NS(
            user=None, cap_add=[], cap_drop=[], security_opt=[], devices=[], privileged=None, read_only_rootfs=None
        ),
        process=NS(workdir=None, init=None, stop_timeout_secs=None, extra_hosts=[], dns=[]),
    )


class Settings(unittest.TestCase):
    def test_a_tcp_base_url_is_needed_and_the_api_version_defaults(self):
        c = api.parse_settings("python-docker", '{"base-url":"http://127.0.0.1:2375/","allowed-hosts":["127.0.0.1:2375"]}')
        self.assertEqual(c, api.Config("http://127.0.0.1:2375", "1.41"))
        self.assertEqual(c.url("/images/json"), "http://127.0.0.1:2375/v1.41/images/json")
        c = api.parse_settings("python-docker", '{"base-url":"tcp://h:2376","api-version":"v1.43"}')
        self.assertEqual(c, api.Config("http://h:2376", "1.43"))
        self.assertEqual(api.parse_settings("x", '{"base-url":"http://h:1","api-version":1.44}').api_version, "1.44")

        def refused(settings, words):
            with self.assertRaises(api.SettingsError) as caught:
                api.parse_settings("python-docker", settings)
            self.assertIn(words, str(caught.exception))

        refused("{}", "`base-url` is missing")
        refused("", "`base-url` is missing")
        refused('{"base-url":null}', "`base-url` is missing")
        refused('{"base-url":" "}', "`base-url` is empty")
        refused('{"base-url":5}', "must be a string, got a number")
        refused('{"base-url":"unix:///var/run/docker.sock"}', "TCP only")
        refused('{"base-url":"http://h:1","api-version":"latest"}', "`api-version`")
        refused('{"base-url":"http://h:1","api-version":true}', "`api-version`")
        refused('{"base-url":"127.0.0.1:2375"}', "expected a URL")
        refused('{"base-url":"ftp://h"}', "is not http, https or tcp")
        refused('{"base-url":"http://h/?x"}', "no query")
        refused("[1]", "expected a JSON object, got an array")
        refused("{", "not valid JSON")


class References(unittest.TestCase):
    def test_references_split_at_the_tag_not_the_registry_port(self):
        self.assertEqual(api.split_reference("foo/bar:1"), ("foo/bar", "1"))
        self.assertEqual(api.split_reference("foo/bar"), ("foo/bar", "latest"))
        self.assertEqual(api.split_reference("reg:5000/foo"), ("reg:5000/foo", "latest"))
        self.assertEqual(api.split_reference("reg:5000/foo:2"), ("reg:5000/foo", "2"))
        self.assertEqual(api.image_tag_path("sha256:abc", "reg:5000/foo:2"), "/images/sha256:abc/tag?repo=reg%3A5000%2Ffoo&tag=2")

    def test_short_names_are_also_looked_for_under_localhost(self):
        self.assertEqual(api.candidates("foo/bar:1"), ["foo/bar:1", "localhost/foo/bar:1"])
        self.assertEqual(api.candidates("alpine"), ["alpine", "localhost/alpine"])
        self.assertEqual(api.candidates("quay.io/x:1"), ["quay.io/x:1"])
        self.assertEqual(api.candidates("localhost/x:1"), ["localhost/x:1"])
        self.assertEqual(api.candidates("sha256:abc"), ["sha256:abc"])
        self.assertEqual(api.image_inspect_path("localhost/foo/bar:1"), "/images/localhost/foo/bar:1/json")

    def test_images_are_removed_unforced_and_agents_stopped_with_their_own_grace(self):
        self.assertEqual(api.image_remove_path("localhost/foo:1"), "/images/localhost/foo:1")
        self.assertEqual(api.container_stop_path("drp-c-1"), "/containers/drp-c-1/stop")
        self.assertEqual(api.container_remove_path("abc"), "/containers/abc?force=1")

    def test_encoding_keeps_what_it_should(self):
        self.assertEqual(api.encode('{"label":["a=b"]}'), "%7B%22label%22%3A%5B%22a%3Db%22%5D%7D")
        self.assertEqual(api.encode("reg:5000/foo"), "reg%3A5000%2Ffoo")
        self.assertEqual(api.encode_path("reg:5000/foo/bar:1"), "reg:5000/foo/bar:1")
        self.assertEqual(api.encode_path("a b?#"), "a%20b%3F%23")


class Load(unittest.TestCase):
    def test_load_reports_are_parsed_for_docker_and_podman(self):
        self.assertEqual(api.loaded_reference("Loaded image: foo:1\n"), "foo:1")
        self.assertEqual(api.loaded_reference("Loaded image ID: sha256:abc\n"), "sha256:abc")
        self.assertEqual(api.loaded_reference("Loaded image(s): localhost/foo:1,localhost/bar:2"), "localhost/foo:1")
        self.assertIsNone(api.loaded_reference("Loading layer 1/3"))

        self.assertEqual(api.parse_load_output(b'{"stream":"Loaded image: foo:1\\n"}\r\n'), ("loaded", "foo:1"))
        podman = b'{"stream":"Loaded image: localhost/foo:1,localhost/foo:2"}'
        self.assertEqual(api.parse_load_output(podman), ("loaded", "localhost/foo:1"))
        by_id = b'{"stream":"Loaded image ID: sha256:abc\\n"}\n{"stream":"Loaded image ID: sha256:def\\n"}\n'
        self.assertEqual(api.parse_load_output(by_id), ("loaded", "sha256:abc"))
        failed = b'{"errorDetail":{"message":"unexpected EOF"},"error":"unexpected EOF"}'
        self.assertEqual(api.parse_load_output(failed), ("error", "unexpected EOF"))
        self.assertEqual(api.parse_load_output(b'{"error":"bad"}'), ("error", "bad"))
        self.assertEqual(api.parse_load_output(b"Loaded image: plain:1\n"), ("loaded", "plain:1"))
        self.assertEqual(api.parse_load_output(b""), ("nothing", None))


class CreateBody(unittest.TestCase):
    def test_a_bare_spec_keeps_the_image_entrypoint_and_adds_nothing(self):
        self.assertEqual(
            api.create_body(spec(), "localhost/foo:1"),
            {
                "Image": "localhost/foo:1",
                "Env": ["RS_UUID=1234", "PATH=/bin"],
                "Labels": {"drp.machine": "1234", "drp.spec": "abc"},
                "HostConfig": {"NetworkMode": "host", "RestartPolicy": {"Name": "unless-stopped"}},
            },
        )

    def test_every_field_is_translated_like_the_native_engines(self):
        s = spec()
        s.entrypoint = ["/usr/bin/drpcli", "machines", "processjobs"]
        s.mounts = [
            NS(kind=MountKind.BIND, source="/srv/drpcli", target="/usr/bin/drpcli", read_only=True, tmpfs_size=None),
            NS(kind=MountKind.VOLUME, source="cache", target="/cache", read_only=False, tmpfs_size=None),
            NS(kind=MountKind.TMPFS, source=None, target="/scratch", read_only=False, tmpfs_size=1 << 20),
        ]
        s.resources = NS(memory=64 << 20, memory_swap=-1, cpus=0.5, pids_limit=100, shm_size=1 << 20)
        s.security = NS(
            user="1000:1000",
            cap_add=["NET_ADMIN"],
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            devices=["/dev/fuse", "/dev/sda:/dev/xvda:r"],
            privileged=False,
            read_only_rootfs=True,
        )
        s.process = NS(workdir="/work", init=True, stop_timeout_secs=30, extra_hosts=["drp:127.0.0.1"], dns=["127.0.0.53"])
        self.assertEqual(
            api.create_body(s, "foo:1"),
            {
                "Image": "foo:1",
                "Env": ["RS_UUID=1234", "PATH=/bin"],
                "Labels": {"drp.machine": "1234", "drp.spec": "abc"},
                "Entrypoint": ["/usr/bin/drpcli", "machines", "processjobs"],
                "Cmd": [],
                "User": "1000:1000",
                "WorkingDir": "/work",
                "StopTimeout": 30,
                "HostConfig": {
                    "NetworkMode": "host",
                    "Mounts": [
                        {"Target": "/usr/bin/drpcli", "Source": "/srv/drpcli", "Type": "bind", "ReadOnly": True},
                        {"Target": "/cache", "Source": "cache", "Type": "volume"},
                        {"Target": "/scratch", "Type": "tmpfs", "TmpfsOptions": {"SizeBytes": 1048576}},
                    ],
                    "Memory": 67108864,
                    "MemorySwap": -1,
                    "NanoCpus": 500000000,
                    "PidsLimit": 100,
                    "ShmSize": 1048576,
                    "Privileged": False,
                    "CapAdd": ["NET_ADMIN"],
                    "CapDrop": ["ALL"],
                    "SecurityOpt": ["no-new-privileges"],
                    "Devices": [
                        {"PathOnHost": "/dev/fuse", "PathInContainer": "/dev/fuse", "CgroupPermissions": "rwm"},
                        {"PathOnHost": "/dev/sda", "PathInContainer": "/dev/xvda", "CgroupPermissions": "r"},
                    ],
                    "ReadonlyRootfs": True,
                    "Init": True,
                    "ExtraHosts": ["drp:127.0.0.1"],
                    "Dns": ["127.0.0.53"],
                    "RestartPolicy": {"Name": "unless-stopped"},
                },
            },
        )

    def test_cpus_round_half_away_from_zero(self):
        s = spec()
        s.resources.cpus = 2.5e-9  # 2.5 nano-CPUs: Rust's round() gives 3, Python's round() 2
        self.assertEqual(api.create_body(s, "x")["HostConfig"]["NanoCpus"], 3)


class Logs(unittest.TestCase):
    def test_logs_are_demultiplexed_and_tailed(self):
        def frame(stream, text):
            data = text.encode()
            return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data

        body = frame(1, "one\ntw") + frame(2, "o\nthree\n") + frame(1, "four\n")
        self.assertEqual(api.log_lines(body, 10), ["one", "two", "three", "four"])
        self.assertEqual(api.log_lines(body, 2), ["three", "four"])
        self.assertEqual(api.log_lines(body, 0), [])
        # A TTY's output is not framed.
        self.assertEqual(api.log_lines(b"plain\r\nlines\n", 5), ["plain", "lines"])
        self.assertEqual(api.log_lines(b"", 5), [])
        self.assertEqual(
            api.container_logs_path("drp-c-1", 50), "/containers/drp-c-1/logs?stdout=1&stderr=1&timestamps=1&tail=50"
        )


class Responses(unittest.TestCase):
    def test_listing_filters_by_label_and_tolerates_any_state(self):
        self.assertEqual(
            api.container_list_path([("drp.plugin", "context-engines")]),
            "/containers/json?all=1&filters=%7B%22label%22%3A%5B%22drp.plugin%3Dcontext-engines%22%5D%7D",
        )
        agents = [
            api.agent_from_summary(s)
            for s in [
                {"Id": "a", "Names": ["/drp-c-1"], "Labels": {"drp.machine": "1"}, "State": "running"},
                {"Id": "b", "Names": ["/drp-c-2"], "Labels": None, "State": "stopped"},
                {"Id": "c"},
            ]
        ]
        self.assertEqual(agents[0], ("drp-c-1", "a", True, {"drp.machine": "1"}))
        self.assertEqual(agents[1], ("drp-c-2", "b", False, {}))
        self.assertEqual(agents[2], ("", "c", False, {}))

    def test_answers_of_the_wrong_types_are_refused_not_passed_on(self):
        with self.assertRaises(TypeError):
            api.agent_from_summary({"Id": "a", "Labels": {"k": 5}})
        with self.assertRaises(TypeError):
            api.agent_from_summary({"Id": 7})
        with self.assertRaises(TypeError):
            api.agent_from_inspect({"Id": "a", "Config": {"Labels": ["k"]}}, "x")

    def test_inspections_become_agents(self):
        inspect = {"Id": "abc", "State": {"Running": True}, "Config": {"Labels": {"drp.image": "foo:1"}}}
        self.assertEqual(api.agent_from_inspect(inspect, "drp-c-1"), ("abc", True, {"drp.image": "foo:1"}))
        running = {"Id": "abc", "State": {"Status": "running", "Running": True}, "Config": {"Labels": None}}
        self.assertEqual(api.agent_from_inspect(running, "drp-c-1"), ("abc", True, {}))

    def test_a_restarting_or_paused_agent_is_not_running(self):
        # Docker says Running: true for both; agent-list (State "restarting"/"paused") says not.
        for status in ("restarting", "paused", "exited", "created"):
            inspect = {"Id": "abc", "State": {"Status": status, "Running": status != "exited"}}
            self.assertFalse(api.agent_from_inspect(inspect, "drp-c-1")[1], status)

    def test_error_messages_come_from_the_json_message(self):
        self.assertEqual(api.error_message(b'{"message":"Conflict. The name is in use"}'), "Conflict. The name is in use")
        self.assertEqual(api.error_message(b'{"cause":"x","message":"no such image","response":404}'), "no such image")
        self.assertEqual(api.error_message(b"page not found\n"), "page not found")
        self.assertEqual(len(api.error_message(b"x" * 600)), 501)
        self.assertEqual(api.path_only("/containers/create?name=x"), "/containers/create")


if __name__ == "__main__":
    unittest.main()
