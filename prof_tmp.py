import cProfile, pstats, sys, time, os, io, multiprocessing as mp, threading
from shared.broker import EmbeddedBroker
from shared.kafka_io import ensure_topics
from services.feedback.config import FeedbackConfig
from services.feedback.server import FeedbackGatewayServer
from benchmarks.feedback_throughput import _client_process

def threads_cpu():
    out = {}
    for tid in os.listdir(f"/proc/self/task"):
        st = open(f"/proc/self/task/{tid}/stat").read()
        name = st[st.index("(")+1:st.rindex(")")]
        f = st.rsplit(")",1)[1].split()
        out[(tid,name)] = (int(f[11])+int(f[12]))/os.sysconf("SC_CLK_TCK")
    return out

if __name__ == "__main__":
    mode = sys.argv[1]; prof = len(sys.argv) > 2
    sys.setswitchinterval(0.0005)
    with EmbeddedBroker(port=0) as b:
        ensure_topics(b.bootstrap)
        s = FeedbackGatewayServer(FeedbackConfig(port=0, metrics_port=-1, kafka=b.bootstrap, server=mode, log_level="WARNING", max_workers=32, linger_ms=int(os.environ.get("LINGER","0"))))
        port = s.start()
        p = cProfile.Profile()
        if prof and mode == "aio":
            s.grpc.loop.call_soon_threadsafe(p.enable)
        spawn = mp.get_context("spawn"); q = spawn.Queue()
        start = time.time() + 3; dl = start + 6
        procs = [spawn.Process(target=_client_process, args=(f"127.0.0.1:{port}", list(range(i,16,2)), "single", 1, f"p{i}", start, dl, q)) for i in range(2)]
        for pr in procs: pr.start()
        time.sleep(start - time.time()); c0 = threads_cpu()
        res = [q.get() for _ in procs]; c1 = threads_cpu()
        if prof and mode == "aio":
            s.grpc.loop.call_soon_threadsafe(p.disable); time.sleep(0.2)
        n = sum(r[0] for r in res)
        print("events/s", n/6, "load", os.getloadavg()[0])
        names = {str(t.native_id): t.name for t in threading.enumerate()}
        tot = 0
        for k in c1:
            d = c1[k] - c0.get(k, 0); tot += d
            if d > 0.01: print(f"{names.get(k[0], k[1]):30s} {d*1e6/n:8.0f} us/event")
        print("total", tot*1e6/n)
        if prof and mode == "aio":
            st = io.StringIO(); pstats.Stats(p, stream=st).sort_stats("tottime").print_stats(25); print(st.getvalue()[:6000])
        s.stop(1)
