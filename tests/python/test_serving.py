"""rrank's HTTP API with the official `openai` client, on the tiny llama test model
(TP=1 and TP=2 under rrun), plus batching invariance, overload with preemption,
client disconnects and malformed requests."""
import concurrent.futures as cf
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

from conftest import ROOT, RRUN, base_env, free_port

DATA = ROOT / "tests" / "data"
RRANK = str(Path(RRUN).parent / "rrank")


class Server:
    def __init__(self, model, n=1, extra=(), env=None):
        self.n = n
        self.port = free_port()
        args = [RRANK, "--model", str(model), "--port", str(self.port), "--served-model-name", "tiny", *map(str, extra)]
        self.p = subprocess.Popen([RRUN, "--standalone", "--nproc-per-node", str(n), "--tee", "3", *args],
                                  env=env or base_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.url = f"http://127.0.0.1:{self.port}"
        for _ in range(600):
            try:
                if urllib.request.urlopen(self.url + "/health", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        else:
            self.stop()
            raise AssertionError("server did not come up: " + self.p.stdout.read())
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0, timeout=120)

    def metrics(self):
        text = urllib.request.urlopen(self.url + "/metrics").read().decode()
        return {m.group(1): float(m.group(2)) for m in re.finditer(r"^rrun:(\w+)\{[^}]*\} (\S+)$", text, re.M)}

    def stop(self):
        self.p.terminate()
        out, _ = self.p.communicate(timeout=60)
        return out


@pytest.fixture(scope="module", params=[("-tp", 1), ("-tp", 2), ("-pp", 2), ("--no-enable-prefix-caching",)],
                ids=["tp1", "tp2", "pp2", "tp1-no-prefix-cache"])
def server(request):
    flags = request.param
    n = flags[1] if len(flags) == 2 else 1
    s = Server(DATA / "llama", n=n, extra=[*flags, "--kv-cache-tokens", 4096])
    yield s
    out = s.stop()
    # rrun exits 1 on SIGTERM, as torchrun does; every rank shut down cleanly.
    assert out.count("rrank: shut down") == 1, out
    assert "exitcode" not in out, out
    assert re.search(r"rrank: steps: \d+ decode-only \(mean [\d.]+ ms", out), out


def test_models_health_and_rank_gauges(server):
    models = server.client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    text = urllib.request.urlopen(server.url + "/metrics").read().decode()
    for r in range(server.n):
        assert re.search(rf'^rrun:rank_weight_bytes\{{rank="{r}"\}} [1-9]', text, re.M), text
        assert re.search(rf'^rrun:rank_kv_tokens\{{rank="{r}"\}} 4096$', text, re.M), text


def step_counters(server):
    text = urllib.request.urlopen(server.url + "/metrics").read().decode()
    out = {}
    for m in re.finditer(r'^rrun:(engine_step\w*)\{model_name="tiny",kind="(\w+)"\} (\S+)$', text, re.M):
        out[(m.group(1), m.group(2))] = float(m.group(3))
    return out


def test_step_timing_in_metrics(server):
    before = step_counters(server)
    assert len(before) == 8, before  # 4 families x {decode, prefill}
    server.client.completions.create(model="tiny", prompt=list(range(3, 43)), max_tokens=6, temperature=0,
                                     extra_body={"ignore_eos": True})
    after = step_counters(server)
    d = {k: after[k] - before[k] for k in after}
    # 40 prompt tokens in one prefill step (which draws the first token), then 5 decode steps.
    assert d[("engine_steps_total", "prefill")] >= 1, d
    assert d[("engine_step_tokens_total", "prefill")] >= 40, d
    assert d[("engine_steps_total", "decode")] >= 5, d
    assert d[("engine_step_seconds_total", "decode")] > 0, d
    assert d[("engine_step_seqs_total", "decode")] >= 5, d


def test_completion_matches_offline_greedy(server):
    ref = json.loads((DATA / "llama" / "reference.json").read_text())
    r = server.client.completions.create(model="tiny", prompt=ref["prompt_ids"], max_tokens=32, temperature=0,
                                         extra_body={"ignore_eos": True})
    tok = json.loads(urllib.request.urlopen(urllib.request.Request(
        server.url + "/tokenize", data=json.dumps({"prompt": r.choices[0].text, "add_special_tokens": False}).encode(),
        headers={"content-type": "application/json"})).read())
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 32 and r.usage.prompt_tokens == len(ref["prompt_ids"])
    # The served text re-tokenizes to the reference's greedy tokens' text.
    detok = json.loads(urllib.request.urlopen(urllib.request.Request(
        server.url + "/detokenize", data=json.dumps({"tokens": ref["greedy"]}).encode(),
        headers={"content-type": "application/json"})).read())
    assert r.choices[0].text == detok["prompt"]
    assert tok["count"] >= 1


def test_chat_stream_and_not(server):
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    full = server.client.chat.completions.create(model="tiny", messages=msgs, max_tokens=12, temperature=0)
    parts = []
    usage = None
    for chunk in server.client.chat.completions.create(model="tiny", messages=msgs, max_tokens=12, temperature=0,
                                                       stream=True, stream_options={"include_usage": True}):
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            parts.append(c.delta.content or "")
    assert "".join(parts) == full.choices[0].message.content
    assert full.choices[0].message.role == "assistant"
    assert usage.completion_tokens == full.usage.completion_tokens == 12


def test_completion_stream_n2_seed_and_stop(server):
    kw = dict(model="tiny", prompt="The capital of", max_tokens=10, temperature=1.0, seed=1234, n=2)
    a = server.client.completions.create(**kw)
    b = server.client.completions.create(**kw)
    assert len(a.choices) == 2
    assert [c.text for c in a.choices] == [c.text for c in b.choices], "same seed, same text"
    streamed = {}
    for chunk in server.client.completions.create(**kw, stream=True):
        for c in chunk.choices:
            streamed[c.index] = streamed.get(c.index, "") + c.text
    assert streamed == {c.index: c.text for c in a.choices}
    text = a.choices[0].text
    if len(text) > 3:
        stop = text[2:4]
        s = server.client.completions.create(**{**kw, "n": 1}, stop=[stop])
        assert stop not in s.choices[0].text and s.choices[0].finish_reason == "stop"


def test_logprobs_completions_and_chat(server):
    import math
    ref = json.loads((DATA / "llama" / "reference.json").read_text())
    r = server.client.completions.create(model="tiny", prompt=ref["prompt_ids"], max_tokens=4, temperature=0,
                                         logprobs=3, extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert all(len(t) == 3 for t in lp.top_logprobs)
    # Greedy: the chosen token is the most likely, so its logprob is the top one.
    assert all(abs(c - max(t.values())) < 1e-6 for c, t in zip(lp.token_logprobs, lp.top_logprobs))
    # And it matches transformers: log_softmax of the last prompt position.
    row = ref["logits"][-1]
    m = max(row)
    want = row[ref["greedy"][0]] - (m + math.log(sum(math.exp(v - m) for v in row)))
    assert abs(lp.token_logprobs[0] - want) < 1e-4
    assert "".join(lp.tokens) == r.choices[0].text
    msgs = [{"role": "user", "content": "Hello"}]
    c = server.client.chat.completions.create(model="tiny", messages=msgs, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2)
    content = c.choices[0].logprobs.content
    assert len(content) == 5 and all(len(e.top_logprobs) == 2 for e in content)
    streamed = []
    for chunk in server.client.chat.completions.create(model="tiny", messages=msgs, max_tokens=5, temperature=0,
                                                       logprobs=True, top_logprobs=2, stream=True):
        for ch in chunk.choices:
            if ch.logprobs and ch.logprobs.content:
                streamed.extend(ch.logprobs.content)
    assert [e.logprob for e in streamed] == [e.logprob for e in content]
    with pytest.raises(openai.BadRequestError) as e:
        server.client.chat.completions.create(model="tiny", messages=msgs, max_tokens=2, top_logprobs=2)
    assert "`logprobs` must be set to true" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        server.client.completions.create(model="tiny", prompt="x", max_tokens=2, logprobs=21)
    assert "greater than max allowed: 20" in str(e.value)


def test_errors(server):
    c = server.client
    with pytest.raises(openai.NotFoundError) as e:
        c.completions.create(model="nope", prompt="x", max_tokens=2)
    assert "The model `nope` does not exist." in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="tiny", prompt="x", max_tokens=2, temperature=-1)
    assert "temperature must be non-negative" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="tiny", prompt="x", max_tokens=5000)
    assert "This model's maximum context length is" in str(e.value)
    with pytest.raises(openai.BadRequestError):
        c.completions.create(model="tiny", prompt="x", max_tokens=2, temperature=0, n=2)


def test_batching_invariance_64_concurrent(server):
    prompts = [[(7 * i + j) % 250 + 4 for j in range(3 + (i * 5) % 40)] for i in range(64)]
    def one(p):
        return server.client.completions.create(model="tiny", prompt=p, max_tokens=12, temperature=0,
                                                extra_body={"ignore_eos": True}).choices[0].text
    alone = [one(p) for p in prompts]
    with cf.ThreadPoolExecutor(64) as ex:
        together = list(ex.map(one, prompts))
    assert together == alone
    assert len(set(alone)) > 32, "the prompts really differ"


def test_prefix_cache_is_used_and_changes_nothing(server):
    prompt = list(range(4, 4 + 70))
    kw = dict(model="tiny", prompt=prompt, max_tokens=8, temperature=0, extra_body={"ignore_eos": True})
    before = server.metrics()["prefix_cache_hits_total"]
    a = server.client.completions.create(**kw).choices[0].text
    b = server.client.completions.create(**kw).choices[0].text
    assert a == b
    hits = server.metrics()["prefix_cache_hits_total"] - before
    if "no-prefix" in server.p.args[-1] or "--no-enable-prefix-caching" in server.p.args:
        assert hits == 0
    else:
        assert hits >= 64, "the second request reuses the first one's full blocks"


def raw_request(port, data, headers=None):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_malformed_requests_get_4xx(server):
    bodies = [b"{", b"[]", b"null", b'{"prompt": 5}', b'{"prompt": "x", "max_tokens": -1}', b'{"prompt": "x", "max_tokens": 1e99}',
              b'{"prompt": "x", "n": "two"}', b'{"prompt": "x", "stop": [""]}', b'{"prompt": [999999]}', b"\xff\xfe",
              b'{"messages": "hi"}', b'{"prompt": "x", "top_p": 0}', b'{"prompt": "x", "stream_options": {}}', b'{"prompt": []}']
    # Slow-loris: connections that never finish their headers must not block anyone.
    lingering = []
    for _ in range(50):
        c = socket.create_connection(("127.0.0.1", server.port))
        c.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-")
        lingering.append(c)
    statuses = []
    for i in range(2000):
        body = bodies[i % len(bodies)]
        path = "/v1/chat/completions" if i % 3 == 0 else "/v1/completions"
        req = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
               f"Connection: close\r\n\r\n").encode() + body
        resp = raw_request(server.port, req)
        status = int(resp.split(b" ", 2)[1])
        statuses.append(status)
        assert 400 <= status < 500, (body, resp[:300])
        assert b'"error"' in resp
    big = b'{"prompt": "' + b"a" * (17 << 20) + b'"}'
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", "/v1/completions", body=big, headers={"Content-Type": "application/json"})
        assert conn.getresponse().status == 413
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may close before reading the whole body
    assert urllib.request.urlopen(server.url + "/health").status == 200
    assert sum(1 for x in statuses if x == 404) == 0 and len(statuses) == 2000
    for c in lingering:
        c.close()


def test_disconnected_streams_free_their_blocks(server):
    free_before = server.metrics()["kv_cache_blocks_free"]
    body = json.dumps({"model": "tiny", "prompt": "Hello", "max_tokens": 200, "temperature": 0, "stream": True,
                       "extra": 1, "ignore_eos": True}).encode()
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", server.port))
        s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        s.recv(1024)  # headers (and maybe a chunk): the stream started
        # Gone at once: kept open while the others start, a fast rank could finish all 200 tokens first.
        s.close()
    for _ in range(100):
        m = server.metrics()
        if m["num_requests_running"] == 0 and m["kv_cache_blocks_free"] == free_before:
            break
        time.sleep(0.1)
    assert m["kv_cache_blocks_free"] == free_before, m
    assert m["request_aborted_total"] >= 20
    assert urllib.request.urlopen(server.url + "/health").status == 200


def test_overload_preempts_and_loses_nothing():
    # 8 blocks of 16 tokens = 128 cache tokens; 20 requests x ~68 tokens need over 10x that.
    s = Server(DATA / "llama", extra=["--kv-cache-tokens", 128, "--max-model-len", 128])
    try:
        prompts = [[(3 * i + j) % 250 + 4 for j in range(10 + i)] for i in range(20)]
        def one(p):
            return s.client.completions.create(model="tiny", prompt=p, max_tokens=48, temperature=0,
                                               extra_body={"ignore_eos": True}).choices[0]
        alone = one(prompts[3]).text
        with cf.ThreadPoolExecutor(20) as ex:
            res = list(ex.map(one, prompts))
        assert all(r.finish_reason == "length" for r in res)
        assert res[3].text == alone, "a preempted, recomputed request returns the same text"
        m = s.metrics()
        assert m["num_preemptions_total"] > 0, m
        assert m["request_success_total"] == 21
        assert sum(len(p) + 48 for p in prompts) > 10 * 128
    finally:
        s.stop()


def test_api_key_and_rrun_bench(tmp_path):
    s = Server(DATA / "llama", extra=["--api-key", "sekret"])
    try:
        assert urllib.request.urlopen(s.url + "/health").status == 200, "/health stays open"
        with pytest.raises(openai.AuthenticationError):
            s.client.models.list()
        ok = openai.OpenAI(base_url=s.url + "/v1", api_key="sekret", max_retries=0)
        assert [m.id for m in ok.models.list().data] == ["tiny"]
    finally:
        s.stop()
    s = Server(DATA / "llama")
    try:
        out = tmp_path / "bench.json"
        p = subprocess.run([str(Path(RRUN).parent / "rrun-bench"), "--base-url", s.url, "--num-prompts", "12", "--input-len", "20",
                            "--output-len", "8", "--max-concurrency", "4", "--vocab", "300", "--result-json", str(out), "--quiet"],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stdout + p.stderr
        r = json.loads(out.read_text())
        assert r["completed"] == 12 and r["failed"] == 0 and r["total_output_tokens"] == 96
        assert r["ttft"]["p50_ms"] > 0 and r["output_throughput"] > 0
        assert "TTFT (time to first token)" in p.stdout
    finally:
        s.stop()


def test_repetition_penalty_matches_transformers(server):
    import torch
    from transformers import AutoModelForCausalLM
    ref = json.loads((DATA / "llama" / "reference.json").read_text())
    m = AutoModelForCausalLM.from_pretrained(DATA / "llama", dtype=torch.float32).eval()
    with torch.no_grad():
        g = m.generate(torch.tensor([ref["prompt_ids"]]), max_new_tokens=16, do_sample=False, repetition_penalty=1.5,
                       eos_token_id=None, pad_token_id=0)
    want = g[0, len(ref["prompt_ids"]):].tolist()
    assert want != ref["greedy"][:16], "the penalty changes the greedy text of this model"
    r = server.client.completions.create(model="tiny", prompt=ref["prompt_ids"], max_tokens=16, temperature=0, logprobs=0,
                                         extra_body={"ignore_eos": True, "repetition_penalty": 1.5})
    detok = json.loads(urllib.request.urlopen(urllib.request.Request(
        server.url + "/detokenize", data=json.dumps({"tokens": want}).encode(),
        headers={"content-type": "application/json"})).read())
    assert r.choices[0].text == detok["prompt"]
    f = server.client.completions.create(model="tiny", prompt=ref["prompt_ids"], max_tokens=16, temperature=0,
                                         frequency_penalty=2.0, presence_penalty=1.0, extra_body={"ignore_eos": True})
    assert f.choices[0].text != r.choices[0].text
    with pytest.raises(openai.BadRequestError) as e:
        server.client.completions.create(model="tiny", prompt="x", max_tokens=2, extra_body={"repetition_penalty": 0})
    assert "repetition_penalty must be greater than zero, got 0" in str(e.value)


def post_json(server, path, body):
    req = urllib.request.Request(server.url + path, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    return urllib.request.urlopen(req)


def test_vllm_generate_route_openapi_and_histograms(server):
    prompt = "The capital of France is"
    r = json.loads(post_json(server, "/generate", {"prompt": prompt, "max_tokens": 6, "temperature": 0}).read())
    assert len(r["text"]) == 1 and r["text"][0].startswith(prompt) and len(r["text"][0]) > len(prompt)
    lines = [json.loads(l) for l in post_json(server, "/generate", {"prompt": prompt, "max_tokens": 6, "temperature": 0,
                                                                    "stream": True}).read().decode().splitlines() if l]
    assert lines and all(l["text"][0].startswith(prompt) for l in lines)
    assert lines[-1]["text"] == r["text"], "cumulative text ends with the full answer"
    two = json.loads(post_json(server, "/generate", {"prompt": prompt, "max_tokens": 4, "temperature": 1.0, "n": 2, "seed": 3}).read())
    assert len(two["text"]) == 2
    with pytest.raises(urllib.error.HTTPError) as e:
        post_json(server, "/generate", {"prompt": 5})
    assert e.value.code == 400
    doc = json.loads(urllib.request.urlopen(server.url + "/openapi.json").read())
    assert {"/v1/completions", "/v1/chat/completions", "/generate", "/metrics"} <= set(doc["paths"])
    text = urllib.request.urlopen(server.url + "/metrics").read().decode()
    m = re.search(r'^rrun:time_to_first_token_seconds_count\{model_name="tiny"\} (\d+)$', text, re.M)
    assert m and int(m.group(1)) >= 3, text
    assert re.search(r'^rrun:e2e_request_latency_seconds_bucket\{le="\+Inf",model_name="tiny"\} \d+$', text, re.M)


def test_sigterm_finishes_streams_in_flight_then_stops_every_rank():
    # SmolLM2 (not the tiny model) so the stream is surely still running when SIGTERM lands.
    smollm2 = os.environ.get("RRUN_SMOLLM2", str(ROOT / "models" / "SmolLM2-135M-Instruct"))
    s = Server(smollm2, n=2, extra=["-pp", 2, "--kv-cache-tokens", 2048, "--max-model-len", 512])
    body = json.dumps({"model": "tiny", "prompt": "Hello", "max_tokens": 48, "temperature": 0, "stream": True,
                       "ignore_eos": True}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=60)
    conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    first = resp.readline()
    assert first.startswith(b"data: ")
    s.p.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(urllib.error.HTTPError) as e:  # new requests are refused while draining
        post_json(s, "/v1/completions", {"prompt": "x", "max_tokens": 2})
    assert e.value.code == 503
    rest = resp.read().decode()
    events = [json.loads(l[6:]) for l in rest.splitlines() if l.startswith("data: {")]
    assert rest.rstrip().endswith("data: [DONE]")
    assert events[-1]["choices"][0]["finish_reason"] == "length", "the stream in flight was finished"
    out, _ = s.p.communicate(timeout=60)
    assert s.p.returncode == 1  # rrun exits 1 on SIGTERM, as torchrun does
    assert out.count("rrank: shut down") == 1 and "exitcode" not in out, out
