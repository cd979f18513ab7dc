// Calling Portcullis from TypeScript with the Connect client buf generates.
//
//   npm ci && ../generate.sh && npm run build
//   node dist/example.js --target 127.0.0.1:50051 [--token KEY]
//
// With `examples/acme.yaml` applied, it checks permissions (one with a
// request context for a condition), looks up what a subject may read, and
// shows the gRPC code of a refused call.

import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Decision, PermissionService, Reason } from "./gen/portcullis/v1/permission_pb.js";

const TENANT = "acme/eng/platform";
const VAULT = "docs";

function flag(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

async function main(): Promise<void> {
  const target = flag("target") ?? "127.0.0.1:50051";
  const token = flag("token");
  const headers: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};
  const client = createClient(PermissionService, createGrpcTransport({ baseUrl: `http://${target}` }));

  const checks: [string, string, string][] = [
    ["user:carol", "documents:read", "document:design.md"],
    ["user:bob", "documents:read", "document:security/keys"],
    ["user:alice", "documents:delete", "document:x"],
  ];
  for (const [subject, action, resource] of checks) {
    const r = await client.checkPermission(
      { tenant: TENANT, vault: VAULT, subject, action, resource, context: { mfa: true } },
      { headers, timeoutMs: 5000 },
    );
    console.log("check", subject, action, resource, Decision[r.decision], Reason[r.reason]);
  }

  const lookup = await client.lookupResources(
    { tenant: TENANT, vault: VAULT, subject: "user:carol", action: "documents:read" },
    { headers, timeoutMs: 5000 },
  );
  for (const g of lookup.grants) {
    console.log("grant", g.bindingId, g.scope.join(" "), g.resources.join(" "));
  }

  try {
    await client.checkPermission(
      { tenant: TENANT, vault: "nope", subject: "user:carol", action: "documents:read", resource: "document:x" },
      { headers, timeoutMs: 5000 },
    );
  } catch (e) {
    const err = ConnectError.from(e);
    console.log("refused", Code[err.code]);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
