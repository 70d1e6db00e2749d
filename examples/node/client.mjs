// A Troop client in Node.js, written from docs/protocol.md and protos/troop/v1 alone:
// join, read the price, authorize, stream from the worker (dialled with TLS exactly when the
// grant says so, its node proof checked before any token), countersign, wait for the job to
// settle (GetJob), and check that what the user paid is what the worker's owner earned.
//
//   COORDINATOR=127.0.0.1:50051 [MODEL=...] [PROMPT=...] [OWNER_KEY=owner.key] node client.mjs
//
// See README.md for every setting. Prints one JSON line: {text, completion_tokens,
// prompt_tokens, charged, paid, earned, price, job_id, ...}. Any failure exits non-zero
// with the reason on stderr.

import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, "..", "..");

const COORDINATOR = required("COORDINATOR");
const MODEL = process.env.MODEL || "smollm2-135m-instruct";
const PROMPT = process.env.PROMPT ?? "hello from node";
// The worker owner's key (PKCS#8 PEM, as `troop up` writes it): read its ledger too, to
// check the owner earned what the user paid. Without it only the user's side is checked.
const OWNER_KEY = process.env.OWNER_KEY ?? "";
// Trust roots (PEM) for TLS; with them the coordinator is dialled with TLS too.
const TLS_CA = process.env.TROOP_TLS_CA ? fs.readFileSync(process.env.TROOP_TLS_CA) : null;
// Plaintext to a worker off loopback only when explicitly allowed (docs/protocol.md).
const INSECURE = ["1", "true", "yes"].includes((process.env.TROOP_INSECURE ?? "").toLowerCase());
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

function identity(privateKey) {
  const jwk = crypto.createPublicKey(privateKey).export({ format: "jwk" });
  return {
    publicKeyHex: Buffer.from(jwk.x, "base64url").toString("hex"),
    sign: (message) => crypto.sign(null, Buffer.from(message, "utf8"), privateKey),
  };
}

const user = identity(crypto.generateKeyPairSync("ed25519").privateKey);
const owner = OWNER_KEY ? identity(crypto.createPrivateKey(fs.readFileSync(OWNER_KEY))) : null;
const userKeyHex = user.publicKeyHex;
const sign = user.sign;

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

function assertion(who) {
  const iat = Math.floor(Date.now() / 1000);
  const header = b64url({ alg: "EdDSA", typ: "JWT" });
  const claims = b64url({
    sub: who.publicKeyHex,
    aud: "troop-coordinator",
    iat,
    exp: iat + 60,
    jti: crypto.randomBytes(16).toString("base64url"),
  });
  const signature = who.sign(`${header}.${claims}`).toString("base64url");
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

function isLoopback(endpoint) {
  const host = endpoint.startsWith("[")
    ? endpoint.slice(1, endpoint.indexOf("]"))
    : endpoint.slice(0, endpoint.lastIndexOf(":"));
  return host === "localhost" || host === "::1" || /^127\./.test(host);
}

// How to dial a worker is stated, not guessed: AuthorizeResponse.tls says whether it serves
// TLS (the coordinator proved its endpoint in that mode). Plaintext off loopback is refused,
// before the ticket leaves this process, unless explicitly allowed.
function workerCredentials(grant) {
  if (grant.tls) {
    return grpc.credentials.createSsl(TLS_CA);
  }
  if (!isLoopback(grant.endpoint) && !INSECURE) {
    throw new Error(
      `refusing plaintext to ${grant.endpoint} off loopback (set TROOP_INSECURE=1 to allow it)`,
    );
  }
  return grpc.credentials.createInsecure();
}

const coordinator = new troop.CoordinatorService(
  COORDINATOR,
  TLS_CA ? grpc.credentials.createSsl(TLS_CA) : grpc.credentials.createInsecure(),
);

function call(method, request, { signed = true, as = user } = {}) {
  const metadata = signed ? bearer(assertion(as)) : new grpc.Metadata();
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

function stream(grant, messages) {
  const worker = new troop.InferenceService(grant.endpoint, workerCredentials(grant));
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

// ---- settlement: GetJob, then both sides' ledgers -------------------------------------

const SETTLED = ["JOB_STATE_CHARGED", "JOB_STATE_REFUNDED", "JOB_STATE_EXPIRED"];

async function settled(jobId) {
  const until = Date.now() + SETTLE_DEADLINE_MS;
  for (let pause = 20; ; pause = Math.min(pause * 2, 250)) {
    const job = await call("GetJob", { job_id: jobId });
    if (SETTLED.includes(job.state)) {
      return job;
    }
    if (Date.now() > until) {
      throw new Error(`job ${jobId} still ${job.state} after ${SETTLE_DEADLINE_MS} ms`);
    }
    await new Promise((r) => setTimeout(r, pause));
  }
}

// Every ledger entry of `who`'s naming `jobId`, all pages read (newest first).
async function entriesFor(who, jobId) {
  const found = [];
  let page_token = "";
  do {
    const page = await call(
      "ListTransactions",
      { public_key: who.publicKeyHex, page_size: 100, page_token },
      { as: who },
    );
    found.push(...page.transactions.filter((t) => t.job_id === jobId));
    page_token = page.next_page_token;
  } while (page_token);
  return found;
}

function sum(transactions) {
  return transactions.reduce((total, t) => total + BigInt(t.amount_millicredits), 0n);
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

  let result;
  try {
    result = await stream(grant, messages);
  } catch (refused) {
    // Refused before the ticket left: countersigning nothing returns the reservation.
    await call("ReportUsage", { job_id: grant.job_id, completion_tokens: 0, stream_ms: 0 });
    throw refused;
  }
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

  // GetJob says where the job stands; poll it (not the balance) until it is settled.
  const job = await settled(grant.job_id);
  if (job.state !== "JOB_STATE_CHARGED") {
    throw new Error(`job ${grant.job_id} ended ${job.state}, not charged`);
  }
  const balance = await call("GetBalance", { public_key: userKeyHex });
  if (BigInt(balance.reserved_millicredits) !== 0n) {
    throw new Error(`${balance.reserved_millicredits} millicredits still reserved`);
  }
  // The user's ledger: the reservation out, the unused part back; what is left is paid.
  const paid = -sum(await entriesFor(user, grant.job_id));
  if (paid !== BigInt(job.charged_millicredits)) {
    throw new Error(`paid ${paid}, but GetJob says ${job.charged_millicredits} was charged`);
  }
  if (starter - BigInt(balance.balance_millicredits) !== paid) {
    throw new Error(`the balance moved by ${starter - BigInt(balance.balance_millicredits)}`);
  }
  // The owner's ledger: one EARN entry for the job, of exactly what the user paid.
  let earned = null;
  if (owner) {
    const earnings = (await entriesFor(owner, grant.job_id)).filter(
      (t) => t.kind === "TRANSACTION_KIND_EARN",
    );
    earned = sum(earnings);
    if (earnings.length !== 1 || earned !== paid) {
      throw new Error(`the owner earned ${earned} in ${earnings.length} entries; paid ${paid}`);
    }
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
      charged: job.charged_millicredits,
      paid: paid.toString(),
      earned: earned === null ? null : earned.toString(),
      job_state: job.state,
      countersigned: job.countersigned,
      receipt_received: job.receipt_received,
      report: { kind: report.kind, disputed: report.disputed },
      tls: grant.tls,
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
