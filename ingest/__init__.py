"""gRPC ingestion: producers outside Ray stream transitions into a running SAC run's replay.

ingest.proto is the schema (ingest_pb2*.py are generated from it by `make proto`), codec.py the
wire arrays and the checks, server.py the server the driver starts, client.py a small client.
"""
