"""Calling Portcullis from Python with the client grpcio-tools generates.

    PYTHON=python3 clients/generate.sh        # writes clients/python/gen
    PYTHONPATH=clients/python/gen python3 clients/python/example.py --target 127.0.0.1:50051

With `examples/acme.yaml` applied, it checks a permission (with a request
context for the condition), looks up what a subject may read, and shows the
machine-readable reason of a refused call (google.rpc.ErrorInfo): branch on
that reason, never on the message.
"""

import argparse

import grpc
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from portcullis.v1 import permission_pb2 as pb
from portcullis.v1 import permission_pb2_grpc

TENANT, VAULT = "acme/eng/platform", "docs"


def reason_of(err: grpc.RpcError) -> str:
    """The ErrorInfo reason a refused call carries ("" when there is none)."""
    status = rpc_status.from_call(err)
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""


def main() -> None:
    args = argparse.ArgumentParser()
    args.add_argument("--target", default="127.0.0.1:50051")
    args.add_argument("--token", help="an API key with the check scope")
    a = args.parse_args()
    metadata = [("authorization", f"Bearer {a.token}")] if a.token else []

    with grpc.insecure_channel(a.target) as channel:
        stub = permission_pb2_grpc.PermissionServiceStub(channel)

        context = struct_pb2.Struct()
        context.update({"mfa": True})
        for subject, action, resource in [
            ("user:carol", "documents:read", "document:design.md"),
            ("user:bob", "documents:read", "document:security/keys"),
            ("user:alice", "documents:delete", "document:x"),
        ]:
            r = stub.CheckPermission(
                pb.CheckPermissionRequest(
                    tenant=TENANT, vault=VAULT, subject=subject, action=action, resource=resource, context=context
                ),
                metadata=metadata,
                timeout=5,
            )
            print("check", subject, action, resource, pb.Decision.Name(r.decision), pb.Reason.Name(r.reason))

        lookup = stub.LookupResources(
            pb.LookupResourcesRequest(tenant=TENANT, vault=VAULT, subject="user:carol", action="documents:read"),
            metadata=metadata,
            timeout=5,
        )
        for g in lookup.grants:
            print("grant", g.binding_id, " ".join(g.scope), " ".join(g.resources))

        try:
            stub.CheckPermission(
                pb.CheckPermissionRequest(
                    tenant=TENANT, vault="nope", subject="user:carol", action="documents:read", resource="document:x"
                ),
                metadata=metadata,
                timeout=5,
            )
        except grpc.RpcError as err:
            print("refused", err.code().name, reason_of(err))


if __name__ == "__main__":
    main()
