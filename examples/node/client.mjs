// A Troop client in Node.js, written from docs/protocol.md and protos/troop/v1 alone:
// join, read the price, authorize, stream from the worker (checking its node proof before
// any token), countersign, and wait for the job to settle.
//
//   COORDINATOR=127.0.0.1:50051 MODEL=smollm2-135m-instruct [PROMPT=...] node client.mjs
//
// Prints one JSON line: {text, completion_tokens, prompt_tokens, charged, price, job_id, ...}.
// Any failure exits non-zero with the reason on stderr.

import crypto from "node:crypto";
import path from "node:path";
import { fileURLToPath } from "node:url";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, "..", "..", "..");

const COORDINATOR = required("COORDINATOR");
const MODEL = required("MODEL");
const PROMPT = process.env.PROMPT ?? "hello from node";
const MAX_TOKENS = 16;
const SETTLE_DEADLINE_MS = Number(process.env.SETTLE_DEADLINE_MS ?? 20000);
const CALL_DEADLINE_MS = 15000;

function required(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is required`);
  }
  return value;
}

// ---- the contract ---------------------------------------------------------------------

const definition = protoLoader.loadSync(
  ["troop/v1/coordinator.proto", "troop/v1/inference.proto"],
  {
    includeDirs: [path.join(ROOT, "protos"), path.join(ROOT, "third_party")],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  },
);
const troop = grpc.loadPackageDefinition(definition).troop.v1;

// ---- identity: an Ed25519 key pair; the account is the public key in hex ---------------

const { publicKey, privateKey } = crypto.generateKeyPairSync("ed25519");
const userKeyHex = Buffer.from(publicKey.export({ format: "jwk" }).x, "base64url").toString(
  "hex",
);

function sign(message) {
  return crypto.sign(null, Buffer.from(message, "utf8"), privateKey);
}

function verify(publicKeyHex, message, signatureHex) {
  if (!/^[0-9a-f]{64}$/.test(publicKeyHex) || !/^[0-9a-f]{128}$/.test(signatureHex ?? "")) {
    return false;
  }
  const key = crypto.createPublicKey({
    key: { kty: "OKP", crv: "Ed25519", x: Buffer.from(publicKeyHex, "hex").toString("base64url") },
    format: "jwk",
  });
  return crypto.verify(
    null,
    Buffer.from(message, "utf8"),
    key,
    Buffer.from(signatureHex, "hex"),
  );
}

// ---- assertions: an EdDSA JWT by the caller's own key, one per call (each jti once) -----

function b64url(object) {
  return Buffer.from(JSON.stringify(object), "utf8").toString("base64url");
}

function assertion() {
  const iat = Math.floor(Date.now() / 1000);
  const header = b64url({ alg: "EdDSA", typ: "JWT" });
  const claims = b64url({
    sub: userKeyHex,
    aud: "troop-coordinator",
    iat,
    exp: iat + 60,
    jti: crypto.randomBytes(16).toString("base64url"),
  });
  const signature = sign(`${header}.${claims}`).toString("base64url");
  return `${header}.${claims}.${signature}`;
}

function bearer(token) {
  const metadata = new grpc.Metadata();
  metadata.set("authorization", `Bearer ${token}`);
  return metadata;
}

function deadline(ms = CALL_DEADLINE_MS) {
  return { deadline: new Date(Date.now() + ms) };
}

const coordinator = new troop.CoordinatorService(
  COORDINATOR,
  grpc.credentials.createInsecure(),
);

function call(method, request, { signed = true } = {}) {
  const metadata = signed ? bearer(assertion()) : new grpc.Metadata();
  return new Promise((resolve, reject) => {
    coordinator[method](request, metadata, deadline(), (error, response) => {
      if (error) {
        reject(new Error(`${method}: ${error.code} ${error.details}`));
      } else {
        resolve(response);
      }
    });
  });
}

// ---- what a client without a tokenizer vouches for (docs/protocol.md) ------------------

function utf8Bytes(text) {
  return Buffer.byteLength(text, "utf8");
}

function promptTokenBound(messages) {
  return 64 + messages.reduce((sum, m) => sum + utf8Bytes(m.content) + 8, 0);
}

// ---- the job -------------------------------------------------------------------------

function isLoopback(endpoint) {
  const host = endpoint.startsWith("[")
    ? endpoint.slice(1, endpoint.indexOf("]"))
    : endpoint.slice(0, endpoint.lastIndexOf(":"));
  return host === "localhost" || host === "::1" || /^127\./.test(host);
}

function stream(grant, messages) {
  if (!isLoopback(grant.endpoint)) {
    // docs/protocol.md: "TLS off loopback"; this test client only speaks plaintext.
    throw new Error(`refusing plaintext to non-loopback endpoint ${grant.endpoint}`);
  }
  const worker = new troop.InferenceService(grant.endpoint, grpc.credentials.createInsecure());
  const nonce = crypto.randomBytes(16).toString("hex");
  const presentation = sign(
    `troop-presentation/v1\n${grant.job_id}\n${grant.node_id}\n${nonce}`,
  ).toString("hex");
  const metadata = bearer(grant.ticket);
  metadata.set("x-troop-client-nonce", nonce);
  metadata.set("x-troop-presentation", presentation);

  const started = performance.now();
  const result = {
    text: "",
    bytes: 0,
    usage: null,
    finish_reason: null,
    proven: false,
    chunks: 0,
    error: null,
  };
  return new Promise((resolve) => {
    const call = worker.ChatCompletion(
      { model: grant.model, messages, max_tokens: MAX_TOKENS },
      metadata,
      deadline(),
    );
    let done = false;
    const finish = (error) => {
      if (done) {
        return;
      }
      done = true;
      result.error = result.error ?? error;
      result.stream_ms = Math.round(performance.now() - started);
      worker.close();
      resolve(result);
    };
    call.on("metadata", (headers) => {
      const proof = headers.get("x-troop-node-proof")[0];
      const message = `troop-node-proof/v1\n${grant.job_id}\n${nonce}\n${grant.node_public_key}`;
      result.proven = verify(grant.node_public_key, message, String(proof ?? ""));
      if (!result.proven) {
        result.error = "the worker is not the node the ticket names";
        call.cancel();
      }
    });
    call.on("data", (chunk) => {
      if (!result.proven) {
        // No token is used before the node proof holds.
        result.error = result.error ?? "a chunk arrived before the node proof";
        call.cancel();
        return;
      }
      result.chunks += 1;
      result.text += chunk.delta;
      result.bytes += utf8Bytes(chunk.delta);
      if (chunk.finish_reason && chunk.finish_reason !== "FINISH_REASON_UNSPECIFIED") {
        result.finish_reason = chunk.finish_reason;
      }
      if (chunk.usage) {
        result.usage = chunk.usage;
      }
    });
    call.on("error", (error) => finish(`${error.code} ${error.details}`));
    call.on("end", () => finish(null));
  });
}

function vouchedTokens(result) {
  // No stop sequences are sent, so the stop-sequence row of the table does not apply.
  if (!result.proven || result.chunks === 0) {
    return 0;
  }
  const bound = result.bytes + 1;
  return result.usage ? Math.min(result.usage.completion_tokens, bound) : bound;
}

function priceFields(price) {
  return {
    prompt_millicredits_per_1k_tokens: price.prompt_millicredits_per_1k_tokens,
    completion_millicredits_per_1k_tokens: price.completion_millicredits_per_1k_tokens,
    parameters: price.parameters,
  };
}

async function main() {
  const joined = await call("Join", {});
  const starter = BigInt(joined.balance_millicredits);

  const { models } = await call("ListModels", {}, { signed: false });
  const offer = models.find((m) => m.id === MODEL);
  if (!offer) {
    throw new Error(`no live node serves ${MODEL}: ${models.map((m) => m.id).join(", ")}`);
  }

  const messages = [{ role: "user", content: PROMPT }];
  const grant = await call("Authorize", {
    model: MODEL,
    max_tokens: MAX_TOKENS,
    max_prompt_tokens: promptTokenBound(messages),
  });
  grant.model = MODEL;

  const result = await stream(grant, messages);
  // Every presented ticket is countersigned, even one that brought nothing.
  const completionTokens = vouchedTokens(result);
  const report = await call("ReportUsage", {
    job_id: grant.job_id,
    completion_tokens: completionTokens,
    stream_ms: result.stream_ms,
  });
  if (result.error) {
    throw new Error(`stream failed: ${result.error}`);
  }

  const until = Date.now() + SETTLE_DEADLINE_MS;
  let balance;
  for (let pause = 20; ; pause = Math.min(pause * 2, 250)) {
    balance = await call("GetBalance", { public_key: userKeyHex });
    if (BigInt(balance.reserved_millicredits) === 0n) {
      break;
    }
    if (Date.now() > until) {
      throw new Error(`job ${grant.job_id} still reserved after ${SETTLE_DEADLINE_MS} ms`);
    }
    await new Promise((r) => setTimeout(r, pause));
  }
  coordinator.close();

  console.log(
    JSON.stringify({
      job_id: grant.job_id,
      node_id: grant.node_id,
      user: userKeyHex,
      text: result.text,
      finish_reason: result.finish_reason,
      completion_tokens: completionTokens,
      worker_completion_tokens: result.usage?.completion_tokens ?? null,
      prompt_tokens: result.usage?.prompt_tokens ?? null,
      max_prompt_tokens: grant.max_prompt_tokens,
      reserved: grant.reserved_millicredits,
      starter: starter.toString(),
      balance: balance.balance_millicredits,
      charged: (starter - BigInt(balance.balance_millicredits)).toString(),
      report: { kind: report.kind, disputed: report.disputed },
      // The published price (ListModels) and the one this job was fixed at (Authorize).
      price: priceFields(offer.price),
      authorized_price: priceFields(grant.price),
      stream_ms: result.stream_ms,
    }),
  );
}

main().catch((error) => {
  console.error(error.stack ?? String(error));
  process.exit(1);
});
