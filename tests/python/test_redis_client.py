"""The Python `redis` package (PyPI) against caskade's RESP listener.

Run by tests/resp/resp_python.rs, which creates a venv with a pinned `redis`,
starts caskade (standalone, or a 3-node cluster) and runs:

    python test_redis_client.py --port PORT [--cluster]

With --cluster the port is a node that leads none of the partitions, so
every command is forwarded to its partition's leader; DBSIZE then answers
this node's share: 0.

Every command caskade offers, pipelines (transaction=False), RESP3
(protocol=3), and errors raised with the exception class and text redis-py
gives for a real Redis.
"""

import argparse
import sys
import time
import unittest
import uuid

import redis

PORT = 0
CLUSTER = False


def client(**kw):
    return redis.Redis(host="127.0.0.1", port=PORT, socket_timeout=20, **kw)


class Base(unittest.TestCase):
    protocol = 2

    def setUp(self):
        self.r = client(decode_responses=True, protocol=self.protocol)
        self.raw = client(protocol=self.protocol)
        # A fresh namespace per test: the database is shared.
        self.p = f"py:{uuid.uuid4().hex[:8]}:"

    def tearDown(self):
        self.r.close()
        self.raw.close()

    def k(self, name):
        return self.p + name

    def assertErr(self, fn, text, cls=redis.exceptions.ResponseError):
        with self.assertRaises(cls) as cm:
            fn()
        self.assertIs(type(cm.exception), cls)
        self.assertEqual(str(cm.exception), text)


class Strings(Base):
    def test_set_get_and_options(self):
        r, k = self.r, self.k
        self.assertTrue(r.set(k("a"), "1"))
        self.assertEqual(r.get(k("a")), "1")
        self.assertIsNone(r.get(k("missing")))
        self.assertIsNone(r.set(k("a"), "2", nx=True))
        self.assertTrue(r.set(k("a"), "2", xx=True))
        self.assertIsNone(r.set(k("b"), "2", xx=True))
        self.assertEqual(r.set(k("a"), "3", get=True), "2")
        self.assertIsNone(r.set(k("new"), "x", get=True))
        self.assertEqual(r.set(k("a"), "4", nx=True, get=True), "3")
        self.assertEqual(r.get(k("a")), "3")
        self.assertTrue(r.set(k("a"), "v", ex=100))
        self.assertIn(r.ttl(k("a")), (99, 100))
        self.assertTrue(r.set(k("a"), "w", keepttl=True))
        self.assertIn(r.ttl(k("a")), (99, 100))
        self.assertTrue(r.set(k("a"), "v", px=50_000))
        self.assertTrue(40_000 < r.pttl(k("a")) <= 50_000)
        self.assertTrue(r.set(k("a"), "v", exat=4102444800))
        self.assertEqual(r.expiretime(k("a")), 4102444800)
        self.assertTrue(r.set(k("a"), "v", pxat=4102444800123))
        self.assertEqual(r.execute_command("PEXPIRETIME", k("a")), 4102444800123)
        self.assertTrue(r.set(k("a"), "v", pxat=1000))
        self.assertIsNone(r.get(k("a")))
        self.assertEqual(r.ttl(k("a")), -2)
        self.assertTrue(r.set(k("a"), "v"))
        self.assertEqual(r.ttl(k("a")), -1)
        self.assertEqual(r.expiretime(k("a")), -1)
        self.assertEqual(r.expiretime(k("missing")), -2)

    def test_binary_values(self):
        raw, k = self.raw, self.k
        self.assertTrue(raw.set(k("bin"), b"\x00\xff\r\n"))
        self.assertEqual(raw.get(k("bin")), b"\x00\xff\r\n")
        self.assertEqual(raw.strlen(k("bin")), 4)
        self.assertEqual(raw.append(k("bin"), b"\x01"), 5)
        self.assertEqual(raw.getdel(k("bin")), b"\x00\xff\r\n\x01")

    def test_setnx_getset_getdel_getex_persist(self):
        r, k = self.r, self.k
        self.assertTrue(r.setnx(k("n"), "1"))
        self.assertFalse(r.setnx(k("n"), "2"))
        self.assertEqual(r.getset(k("n"), "3"), "1")
        self.assertIsNone(r.getset(k("g"), "x"))
        self.assertEqual(r.getdel(k("g")), "x")
        self.assertIsNone(r.getdel(k("g")))
        self.assertEqual(r.getex(k("n")), "3")
        self.assertEqual(r.ttl(k("n")), -1)
        self.assertEqual(r.getex(k("n"), ex=100), "3")
        self.assertIn(r.ttl(k("n")), (99, 100))
        self.assertEqual(r.getex(k("n"), px=200_000), "3")
        self.assertIn(r.ttl(k("n")), (199, 200))
        self.assertEqual(r.getex(k("n"), exat=4102444800), "3")
        self.assertEqual(r.expiretime(k("n")), 4102444800)
        self.assertEqual(r.getex(k("n"), pxat=4102444800500), "3")
        self.assertEqual(r.execute_command("PEXPIRETIME", k("n")), 4102444800500)
        self.assertEqual(r.getex(k("n"), persist=True), "3")
        self.assertEqual(r.ttl(k("n")), -1)
        self.assertIsNone(r.getex(k("missing"), ex=10))
        self.assertTrue(r.expire(k("n"), 100))
        self.assertTrue(r.persist(k("n")))
        self.assertFalse(r.persist(k("n")))
        self.assertFalse(r.persist(k("missing")))

    def test_expire_family(self):
        r, k = self.r, self.k
        r.set(k("e"), "v")
        self.assertFalse(r.expire(k("e"), 100, xx=True))
        self.assertFalse(r.expire(k("e"), 100, gt=True))
        self.assertTrue(r.expire(k("e"), 100, lt=True))
        self.assertFalse(r.expire(k("e"), 200, nx=True))
        self.assertFalse(r.expire(k("e"), 50, gt=True))
        self.assertTrue(r.expire(k("e"), 200, gt=True))
        self.assertIn(r.ttl(k("e")), (199, 200))
        self.assertTrue(r.pexpire(k("e"), 150_000, lt=True))
        self.assertIn(r.ttl(k("e")), (149, 150))
        self.assertTrue(r.expire(k("e"), 300, xx=True))
        self.assertFalse(r.expire(k("missing"), 300))
        self.assertTrue(r.expireat(k("e"), 4102444800))
        self.assertEqual(r.expiretime(k("e")), 4102444800)
        self.assertFalse(r.expireat(k("e"), 4102444900, lt=True))
        self.assertTrue(r.pexpireat(k("e"), 4102444800250, gt=True))
        self.assertEqual(r.execute_command("PEXPIRETIME", k("e")), 4102444800250)
        self.assertEqual(r.expiretime(k("e")), 4102444800)
        # A time not in the future deletes the key.
        self.assertTrue(r.expireat(k("e"), 1))
        self.assertEqual(r.exists(k("e")), 0)
        r.set(k("e"), "v")
        self.assertTrue(r.expire(k("e"), -1))
        self.assertIsNone(r.get(k("e")))

    def test_counters(self):
        r, k = self.r, self.k
        self.assertEqual(r.execute_command("INCR", k("c")), 1)
        self.assertEqual(r.incr(k("c")), 2)
        self.assertEqual(r.incrby(k("c"), 40), 42)
        self.assertEqual(r.execute_command("DECR", k("c")), 41)
        self.assertEqual(r.decr(k("c"), 50), -9)
        self.assertEqual(r.decrby(k("c"), -9), 0)
        self.assertEqual(r.get(k("c")), "0")
        r.set(k("t"), "10", ex=100)
        self.assertEqual(r.incr(k("t")), 11)
        self.assertIn(r.ttl(k("t")), (99, 100))

    def test_append_strlen(self):
        r, k = self.r, self.k
        self.assertEqual(r.append(k("a"), "hi"), 2)
        self.assertEqual(r.append(k("a"), " there"), 8)
        self.assertEqual(r.get(k("a")), "hi there")
        self.assertEqual(r.strlen(k("a")), 8)
        self.assertEqual(r.strlen(k("missing")), 0)

    def test_mset_mget_exists_del_type(self):
        r, k = self.r, self.k
        keys = [k(f"m{i}") for i in range(20)]
        self.assertTrue(r.mset({key: f"v{i}" for i, key in enumerate(keys)}))
        self.assertEqual(r.mget(keys), [f"v{i}" for i in range(20)])
        self.assertEqual(r.mget(keys[0], k("missing")), ["v0", None])
        self.assertEqual(r.exists(*keys, k("missing")), 20)
        self.assertEqual(r.type(keys[0]), "string")
        self.assertEqual(r.type(k("missing")), "none")
        self.assertEqual(r.delete(*keys[:10]), 10)
        self.assertEqual(r.unlink(*keys[10:], k("missing")), 10)
        self.assertEqual(r.exists(*keys), 0)

    def test_dbsize(self):
        r, k = self.r, self.k
        before = r.dbsize()
        r.mset({k("d1"): "1", k("d2"): "2", k("d3"): "3"})
        if CLUSTER:
            # A node that leads no partition: its share is 0.
            self.assertEqual(before, 0)
            self.assertEqual(r.dbsize(), 0)
        else:
            self.assertEqual(r.dbsize(), before + 3)
        r.delete(k("d1"), k("d2"), k("d3"))

    def test_connection_commands(self):
        r = self.r
        self.assertTrue(r.ping())
        self.assertEqual(r.echo("hi there"), "hi there")
        self.assertTrue(r.client_setname("py-test"))
        self.assertEqual(r.client_getname(), "py-test")
        self.assertIsInstance(r.client_id(), int)
        self.assertEqual(r.config_get("maxmemory"), {"maxmemory": "0"})
        # The in-sync followers: 2 in the cluster (replication factor 3).
        self.assertEqual(r.wait(0, 0), 2 if CLUSTER else 0)
        self.assertIn("redis_version", r.info("server"))

    def test_errors(self):
        r, k = self.r, self.k
        r.set(k("s"), "abc")
        self.assertErr(lambda: r.incr(k("s")), "value is not an integer or out of range")
        self.assertErr(
            lambda: r.execute_command("INCRBY", k("c"), "1.5"),
            "value is not an integer or out of range",
        )
        r.set(k("big"), str(2**63 - 1))
        self.assertErr(lambda: r.incr(k("big")), "increment or decrement would overflow")
        self.assertErr(
            lambda: r.execute_command("DECRBY", k("big"), str(-(2**63))),
            "decrement would overflow",
        )
        self.assertEqual(r.get(k("big")), str(2**63 - 1))
        self.assertErr(
            lambda: r.execute_command("SET", k("s"), "v", "NX", "XX"), "syntax error"
        )
        self.assertErr(
            lambda: r.execute_command("SET", k("s"), "v", "EX", "0"),
            "invalid expire time in 'set' command",
        )
        self.assertErr(
            lambda: r.getex(k("s"), ex=0), "invalid expire time in 'getex' command"
        )
        self.assertErr(
            lambda: r.execute_command("EXPIRE", k("s"), "10", "NX", "XX"),
            "NX and XX, GT or LT options at the same time are not compatible",
        )
        self.assertErr(
            lambda: r.execute_command("PEXPIRE", k("s"), "9223372036854775807"),
            "invalid expire time in 'pexpire' command",
        )
        self.assertErr(
            lambda: r.execute_command("GET"),
            "wrong number of arguments for 'get' command",
        )
        self.assertErr(
            lambda: r.execute_command("MSET", k("a"), "1", k("b")),
            "wrong number of arguments for 'mset' command",
        )
        self.assertErr(
            lambda: r.execute_command("NOSUCH", "a"),
            "unknown command 'NOSUCH', with args beginning with: 'a' ",
        )
        self.assertErr(lambda: r.set(k("s"), "v", ex=1, px=1), "syntax error")
        # The connection is still good.
        self.assertEqual(r.get(k("s")), "abc")


class Pipelines(Base):
    def test_pipeline_in_order(self):
        r, k = self.r, self.k
        pipe = r.pipeline(transaction=False)
        pipe.set(k("p"), "1")
        pipe.incr(k("p"))
        pipe.get(k("p"))
        pipe.append(k("p"), "x")
        pipe.getset(k("p"), "5")
        pipe.incrby(k("p"), 5)
        pipe.expire(k("p"), 100)
        pipe.ttl(k("p"))
        pipe.persist(k("p"))
        pipe.getex(k("p"), ex=50)
        pipe.getdel(k("p"))
        pipe.exists(k("p"))
        pipe.mset({k("q1"): "a", k("q2"): "b"})
        pipe.mget(k("q1"), k("q2"), k("q3"))
        pipe.setnx(k("q1"), "z")
        pipe.strlen(k("q2"))
        pipe.delete(k("q1"), k("q2"))
        self.assertEqual(
            pipe.execute(),
            [True, 2, "2", 2, "2x", 10, True, 100, True, "10", "10", 0,
             True, ["a", "b", None], False, 1, 2],
        )

    def test_many_writes_in_one_pipeline(self):
        r, k = self.r, self.k
        pipe = r.pipeline(transaction=False)
        for i in range(500):
            pipe.incr(k("hot"))
            pipe.set(k(f"w{i}"), str(i))
        out = pipe.execute()
        self.assertEqual(out[0::2], list(range(1, 501)))
        self.assertEqual(out[1::2], [True] * 500)
        self.assertEqual(r.mget([k(f"w{i}") for i in range(500)]),
                         [str(i) for i in range(500)])
        r.delete(*[k(f"w{i}") for i in range(500)], k("hot"))

    def test_pipeline_errors_in_place(self):
        r, k = self.r, self.k
        r.set(k("s"), "abc")
        pipe = r.pipeline(transaction=False)
        pipe.set(k("x"), "1")
        pipe.incr(k("s"))
        pipe.get(k("x"))
        out = pipe.execute(raise_on_error=False)
        self.assertEqual(out[0], True)
        self.assertIsInstance(out[1], redis.exceptions.ResponseError)
        self.assertEqual(str(out[1]), "value is not an integer or out of range")
        self.assertEqual(out[2], "1")
        pipe = r.pipeline(transaction=False)
        pipe.incr(k("s"))
        pipe.get(k("x"))
        with self.assertRaises(redis.exceptions.ResponseError):
            pipe.execute()


class Resp3Strings(Strings):
    """Every string test again, over RESP3 (HELLO 3)."""

    protocol = 3


class Resp3Pipelines(Pipelines):
    protocol = 3


class Resp3Only(Base):
    protocol = 3

    def test_hello_and_nulls(self):
        r, k = self.r, self.k
        hello = r.execute_command("HELLO", "3")
        self.assertEqual(hello["proto"], 3)
        self.assertEqual(hello["server"], "caskade")
        self.assertIsNone(r.get(k("missing")))
        self.assertIsNone(r.getdel(k("missing")))
        self.assertEqual(r.mget(k("missing")), [None])
        self.assertEqual(r.config_get("maxmemory"), {"maxmemory": "0"})
        self.assertEqual(r.connection_pool.connection_kwargs.get("protocol"), 3)


def main():
    global PORT, CLUSTER
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cluster", action="store_true")
    args, rest = ap.parse_known_args()
    PORT, CLUSTER = args.port, args.cluster
    print(f"redis-py {redis.__version__} against 127.0.0.1:{PORT}", flush=True)
    started = time.monotonic()
    prog = unittest.main(argv=[sys.argv[0], "-v"] + rest, exit=False)
    print(f"{time.monotonic() - started:.1f} s", flush=True)
    result = prog.result
    ok = result.wasSuccessful() and result.testsRun > 0
    print(f"ran {result.testsRun} tests", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
