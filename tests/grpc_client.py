"""A Python gRPC client generated from proto/ (grpcio-tools), run by
tests/grpc.rs against a live `isoflow run`: put, activate, score, watch
alerts, and the refusal without a token.

usage: grpc_client.py STUBS_DIR ADDRESS TOKEN MODEL_FILE ISOFLOW_BIN BROKERS TOPIC
"""
import subprocess
import sys
import threading

sys.path.insert(0, sys.argv[1])
import grpc  # noqa: E402
from isoflow.v1 import api_pb2, api_pb2_grpc  # noqa: E402

_, _, address, token, model_file, isoflow_bin, brokers, topic = sys.argv
auth = [("authorization", f"Bearer {token}")]
channel = grpc.insecure_channel(address)
models = api_pb2_grpc.ModelServiceStub(channel)
scoring = api_pb2_grpc.ScoringServiceStub(channel)

try:
    models.ListModels(api_pb2.ListModelsRequest())
    sys.exit("ListModels without a token was not refused")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e

with open(model_file, "rb") as f:
    put = models.PutModel(api_pb2.PutModelRequest(model_bytes=f.read(), name="pyfraud"), metadata=auth)
assert put.name == "pyfraud" and put.version == 1, put
act = models.ActivateModel(
    api_pb2.ActivateModelRequest(name="pyfraud", version=put.version, pipeline="fraud", mode=api_pb2.MODE_LIVE),
    metadata=auth,
)
assert act.model == "pyfraud@1", act
records = subprocess.run(
    [isoflow_bin, "gen", "--scenario", "fraud", "--count", "5", "--seed", "2", "--out", "/dev/stdout"],
    check=True,
    capture_output=True,
).stdout.splitlines()
scored = scoring.Score(api_pb2.ScoreRequest(model="pyfraud@1", records=records), metadata=auth)
assert len(scored.results) == 5, scored
print("python score:", scored.model, [round(r.score, 4) for r in scored.results])

stream = scoring.WatchAlerts(api_pb2.WatchAlertsRequest(pipeline="fraud"), metadata=auth, timeout=30)
got = []


def watch():
    for alert in stream:
        got.append(alert)
        break


t = threading.Thread(target=watch)
t.start()
subprocess.run(
    [isoflow_bin, "gen", "--brokers", brokers, "--scenario", "fraud", "--count", "2000", "--seed", "9", "--topic", topic],
    check=True,
    capture_output=True,
)
t.join(30)
stream.cancel()
assert got, "no alert streamed"
assert got[0].model == "pyfraud@1", got[0]
print("python client ok:", got[0].alert_id)
