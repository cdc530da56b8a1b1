// The shipping participant in Node.js: docs/protocol.md implemented with amqplib and node-postgres.
//
// A template for a participant in any language. What makes it a participant is the contract:
// declare the topology (section 2), take commands from "{ns}.shipping" with manual acks, reject
// what cannot be valid (section 6, step 1), answer each command once (section 7: here with a
// durable record in PostgreSQL, in the same transaction as the business row), publish the reply
// with a publisher confirm, and only then ack the command.
//
// Run: node shipping.js (settings from the environment, see README.md).

import { createHash, randomUUID } from "node:crypto";
import process from "node:process";
import amqp from "amqplib";
import pg from "pg";

const SERVICE = "shipping";
const SCHEMA = "shipping_node"; // its own schema, so it can share a database with other services
const EXIT_SETTINGS = 2; // a bad setting, or the broker or database unreachable or refusing at start
const EXIT_LOST = 1; // the connection to RabbitMQ was lost: a supervisor restarts us
const RETRY_PAUSE_MS = 1000; // before giving a command back after a database error
// The headers a reply carries on from its command (docs/protocol.md, section 6): the saga's, and
// the W3C trace context, so that the saga stays one trace across every service (docs/tracing.md).
// No OpenTelemetry SDK here: passing the context on keeps the trace whole, a span of its own
// would only add this service to it.
const PASSED_ON = ["x-saga-id", "x-workflow", "traceparent", "tracestate"];

// ---------------------------------------------------------------------------------------------
// Settings

/** @param {string} name @param {string} fallback */
const env = (name, fallback) => process.env[name] || fallback;

/** @param {string} message */
function die(message) {
  log("error", message);
  process.exit(EXIT_SETTINGS);
}

/** The URL with its password replaced, because URLs end up in logs. @param {string} url */
function mask(url) {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = "******";
    return parsed.toString();
  } catch {
    return "<unparsable URL>";
  }
}

const settings = {
  amqpUrl: env("ORCHESTRATOR_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
  namespace: env("ORCHESTRATOR_NAMESPACE", "saga"),
  queueType: env("ORCHESTRATOR_QUEUE_TYPE", "classic"),
  // The same variable serves the Python participants, whose driver is spelled into the URL.
  databaseUrl: env("PARTICIPANT_DATABASE_URL", "").replace(/^(postgres(?:ql)?)\+asyncpg:/, "$1:"),
  prefetch: Number(env("PARTICIPANT_CONCURRENCY", "10")),
  failRate: Number(env("PARTICIPANT_FAIL_RATE", "0")),
  shutdownGrace: Number(env("PARTICIPANT_SHUTDOWN_GRACE", "10")),
};

/** One line per event on stderr, never a password. @param {string} level @param {string} text */
function log(level, text) {
  process.stderr.write(`${new Date().toISOString()} ${level} shipping-node: ${text}\n`);
}

// ---------------------------------------------------------------------------------------------
// The contract's pure parts: topology arguments, ids, validation

/** Arguments of "{ns}.shipping", exactly as every party declares it (docs/protocol.md, section 2). */
function queueArguments() {
  const dead = `${settings.namespace}.dead`;
  if (settings.queueType === "quorum") {
    return {
      "x-queue-type": "quorum",
      "x-delivery-limit": 20,
      "x-dead-letter-exchange": dead,
      "x-dead-letter-strategy": "at-least-once",
      "x-overflow": "reject-publish",
    };
  }
  return { "x-dead-letter-exchange": dead };
}

/** Arguments of "{ns}.dead-letter": its type, nothing more. */
const deadLetterArguments = () => (settings.queueType === "quorum" ? { "x-queue-type": "quorum" } : {});

const NAMESPACE_OID = "6ba7b812-9dad-11d1-80b4-00c04fd430c8";

/** RFC 4122 version 5 UUID, as Python's uuid.uuid5. @param {string} namespace @param {string} name */
function uuid5(namespace, name) {
  const hash = createHash("sha1")
    .update(Buffer.from(namespace.replaceAll("-", ""), "hex"))
    .update(name, "utf8")
    .digest();
  hash[6] = (hash[6] & 0x0f) | 0x50;
  hash[8] = (hash[8] & 0x3f) | 0x80;
  const hex = hash.subarray(0, 16).toString("hex");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** The reply's message id (section 6): a re-sent command yields a reply the orchestrator drops.
 * @param {string} commandId @param {string} replyType */
const replyMessageId = (commandId, replyType) => uuid5(NAMESPACE_OID, `${commandId}:${replyType}`);

/** PARTICIPANT_FAIL_RATE: the first 8 bytes of sha256("shipping:<order_id>") / 2^64 below the rate,
 * as the Python participants decide, so both fail the same orders. @param {string} orderId */
function injectedFailure(orderId) {
  if (!(settings.failRate > 0)) return false;
  const digest = createHash("sha256").update(`${SERVICE}:${orderId}`, "utf8").digest();
  return Number(digest.readBigUInt64BE(0)) / 2 ** 64 < settings.failRate;
}

class InvalidCommand extends Error {}

/** The ShipOrder command from a delivery, or InvalidCommand (section 5, 6).
 * @param {import("amqplib").ConsumeMessage} message
 * @returns {{orderId: string, lines: {sku: string, quantity: number}[]}} */
function parseCommand(message) {
  const { type, messageId, correlationId } = message.properties;
  if (!type) throw new InvalidCommand("no type property");
  if (!messageId) throw new InvalidCommand("no message_id property");
  if (!correlationId) throw new InvalidCommand("no correlation_id property: the reply could not name its saga");
  if (type !== "shipping.ShipOrder") throw new InvalidCommand(`shipping does not handle ${JSON.stringify(type)}`);
  let body;
  try {
    body = JSON.parse(message.content.toString("utf8"));
  } catch (error) {
    throw new InvalidCommand(`body is not JSON: ${/** @type {Error} */ (error).message}`);
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw new InvalidCommand("body is not a JSON object");
  }
  if (typeof body.order_id !== "string") throw new InvalidCommand("field 'order_id' must be a string");
  if (!Array.isArray(body.lines)) throw new InvalidCommand("field 'lines' must be a list");
  body.lines.forEach((/** @type {any} */ line, /** @type {number} */ index) => {
    if (typeof line !== "object" || line === null || typeof line.sku !== "string" || !Number.isInteger(line.quantity)) {
      throw new InvalidCommand(`lines[${index}] must be {"sku": string, "quantity": integer}`);
    }
  });
  return { orderId: body.order_id, lines: body.lines };
}

// ---------------------------------------------------------------------------------------------
// The durable record: an inbox of answered message ids and the shipments, in one database

const SETUP = `
  CREATE SCHEMA IF NOT EXISTS ${SCHEMA};
  CREATE TABLE IF NOT EXISTS ${SCHEMA}.inbox (
    message_id       text PRIMARY KEY,          -- the command's: a repeat is recognised by it
    command_type     text NOT NULL,
    saga_id          text NOT NULL,
    reply_type       text,                      -- the reply given, to give again on a repeat
    reply_body       json,                      -- json, not jsonb: kept byte for byte
    reply_message_id text,
    received_at      timestamptz NOT NULL DEFAULT now()
  );
  CREATE TABLE IF NOT EXISTS ${SCHEMA}.shipments (
    order_id           text PRIMARY KEY,        -- one shipment per order
    status             text NOT NULL CHECK (status IN ('shipped', 'failed')),
    tracking_id        text,
    reason             text,
    lines              json NOT NULL,
    command_message_id text NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT now()
  );`;

/** Decide, record and remember the answer to one command, in one transaction.
 * @param {pg.Pool} pool @param {import("amqplib").ConsumeMessage} message
 * @param {{orderId: string, lines: object[]}} command
 * @returns {Promise<{type: string, body: string, messageId: string, repeat: boolean}>} */
async function answer(pool, message, command) {
  const { messageId, type, correlationId } = message.properties;
  const client = await pool.connect();
  try {
    await client.query("BEGIN");
    // The unique key serialises duplicates: a second insert of the same id waits here until the
    // first transaction ends, then finds the row (and its reply) instead of doing the work again.
    const fresh = await client.query(
      `INSERT INTO ${SCHEMA}.inbox (message_id, command_type, saga_id) VALUES ($1, $2, $3)
       ON CONFLICT (message_id) DO NOTHING RETURNING message_id`,
      [messageId, type, correlationId],
    );
    if (fresh.rowCount === 0) {
      const { rows } = await client.query(
        `SELECT reply_type, reply_body::text AS reply_body, reply_message_id FROM ${SCHEMA}.inbox WHERE message_id = $1`,
        [messageId],
      );
      await client.query("COMMIT");
      return { type: rows[0].reply_type, body: rows[0].reply_body, messageId: rows[0].reply_message_id, repeat: true };
    }
    // The business work. One shipment per order: a new attempt (another command id) for an order
    // already shipped answers with that shipment; only a failed one is tried again.
    const fails = injectedFailure(command.orderId);
    const { rows } = await client.query(
      `INSERT INTO ${SCHEMA}.shipments AS s (order_id, status, tracking_id, reason, lines, command_message_id)
       VALUES ($1, $2, $3, $4, $5, $6)
       ON CONFLICT (order_id) DO UPDATE SET status = excluded.status, tracking_id = excluded.tracking_id,
         reason = excluded.reason, command_message_id = excluded.command_message_id, updated_at = now()
         WHERE s.status = 'failed'
       RETURNING status, tracking_id, reason`,
      [
        command.orderId,
        fails ? "failed" : "shipped",
        fails ? null : randomUUID(),
        fails ? "injected failure (fail rate)" : null,
        JSON.stringify(command.lines),
        messageId,
      ],
    );
    const shipment =
      rows[0] ??
      (await client.query(`SELECT status, tracking_id, reason FROM ${SCHEMA}.shipments WHERE order_id = $1`, [command.orderId]))
        .rows[0];
    const replyType = shipment.status === "shipped" ? "shipping.OrderShipped" : "shipping.ShipmentFailed";
    const body = JSON.stringify(
      shipment.status === "shipped"
        ? { order_id: command.orderId, tracking_id: shipment.tracking_id }
        : { order_id: command.orderId, reason: shipment.reason },
    );
    const replyId = replyMessageId(messageId, replyType);
    await client.query(
      `UPDATE ${SCHEMA}.inbox SET reply_type = $2, reply_body = $3, reply_message_id = $4 WHERE message_id = $1`,
      [messageId, replyType, body, replyId],
    );
    await client.query("COMMIT");
    return { type: replyType, body, messageId: replyId, repeat: false };
  } catch (error) {
    await client.query("ROLLBACK").catch(() => {});
    throw error;
  } finally {
    client.release();
  }
}

// ---------------------------------------------------------------------------------------------
// The AMQP side

async function main() {
  if (!["classic", "quorum"].includes(settings.queueType)) {
    die(`ORCHESTRATOR_QUEUE_TYPE must be classic or quorum, not ${JSON.stringify(settings.queueType)}`);
  }
  if (!settings.databaseUrl) die("PARTICIPANT_DATABASE_URL is not set (a postgresql:// URL)");
  if (!(Number.isInteger(settings.prefetch) && settings.prefetch > 0)) die("PARTICIPANT_CONCURRENCY must be a positive integer");
  if (!(settings.failRate >= 0 && settings.failRate <= 1)) die("PARTICIPANT_FAIL_RATE must be between 0 and 1");
  if (!(settings.shutdownGrace > 0)) die("PARTICIPANT_SHUTDOWN_GRACE must be a positive number of seconds");

  const ns = settings.namespace;
  const pool = new pg.Pool({ connectionString: settings.databaseUrl, max: Math.min(settings.prefetch, 10) });
  pool.on("error", (error) => log("warning", `idle database connection failed: ${error.message}`));
  try {
    await pool.query(SETUP);
  } catch (error) {
    die(`cannot prepare the database at ${mask(settings.databaseUrl)}: ${/** @type {Error} */ (error).message}`);
  }

  let connection;
  try {
    connection = await amqp.connect(settings.amqpUrl, {
      timeout: 10_000,
      clientProperties: { connection_name: `${ns}.${SERVICE} (node, pid ${process.pid})` },
    });
  } catch (error) {
    die(`cannot connect to RabbitMQ at ${mask(settings.amqpUrl)}: ${/** @type {Error} */ (error).message}`);
    return;
  }
  let stopping = false;
  // No reconnection: with the connection lost, every unacked command goes back to the queue, so
  // exiting loses nothing; a supervisor (systemd, Kubernetes, docker restart) starts us again.
  connection.on("close", (error) => {
    if (stopping) return;
    log("error", `lost the connection to RabbitMQ${error ? `: ${error.message}` : ""}; exiting ${EXIT_LOST}`);
    process.exit(EXIT_LOST);
  });
  connection.on("error", () => {}); // "close" follows and says why

  // Two channels: deliveries are not held back behind publisher confirms, and the prefetch
  // counts commands only.
  const consume = await connection.createChannel();
  const publish = await connection.createConfirmChannel();
  let declaring = true; // a refusal while declaring is reported below, with its exit code
  for (const channel of [consume, publish]) {
    channel.on("error", (error) => {
      if (stopping || declaring) return;
      log("error", `channel closed by RabbitMQ: ${error.message}; exiting ${EXIT_LOST}`);
      process.exit(EXIT_LOST);
    });
  }
  const queue = `${ns}.${SERVICE}`;
  try {
    await consume.assertExchange(`${ns}.commands`, "topic", { durable: true });
    await consume.assertExchange(`${ns}.events`, "topic", { durable: true });
    await consume.assertExchange(`${ns}.dead`, "fanout", { durable: true });
    await consume.assertQueue(`${ns}.dead-letter`, { durable: true, arguments: deadLetterArguments() });
    await consume.bindQueue(`${ns}.dead-letter`, `${ns}.dead`, "");
    await consume.assertQueue(queue, { durable: true, arguments: queueArguments() });
    await consume.bindQueue(queue, `${ns}.commands`, `${SERVICE}.#`);
    await consume.prefetch(settings.prefetch);
    declaring = false;
  } catch (error) {
    stopping = true;
    log("error", `RabbitMQ refused the topology: ${/** @type {Error} */ (error).message}`);
    if (/** @type {{code?: number}} */ (error).code === 406) {
      log("error", `declared as ${settings.queueType} queues (ORCHESTRATOR_QUEUE_TYPE): is the broker's of the other type?`);
    }
    process.exit(EXIT_SETTINGS);
  }

  /** @type {Set<Promise<void>>} */
  const inflight = new Set();

  /** Publish the reply and wait for the broker's confirm (section 6, steps 3 and 4).
   * @param {import("amqplib").ConsumeMessage} command @param {{type: string, body: string, messageId: string}} reply */
  const publishReply = (command, reply) =>
    new Promise((resolve, reject) => {
      const headers = command.properties.headers ?? {};
      publish.publish(
        `${ns}.events`,
        reply.type,
        Buffer.from(reply.body, "utf8"),
        {
          type: reply.type,
          messageId: reply.messageId,
          correlationId: command.properties.correlationId,
          contentType: "application/json",
          deliveryMode: 2,
          headers: Object.fromEntries(PASSED_ON.filter((k) => k in headers).map((k) => [k, headers[k]])),
          timestamp: Math.floor(Date.now() / 1000),
          appId: "participants.node.shipping",
        },
        (error) => (error ? reject(error) : resolve(undefined)),
      );
    });

  /** @param {import("amqplib").ConsumeMessage} message */
  async function serve(message) {
    const label = `${message.properties.type ?? "<no type>"} id=${message.properties.messageId ?? "<none>"}`;
    let command;
    try {
      command = parseCommand(message);
    } catch (error) {
      log("warning", `${label} rejected to ${ns}.dead: ${/** @type {Error} */ (error).message}`);
      consume.reject(message, false); // -> {ns}.dead -> {ns}.dead-letter, never requeued
      return;
    }
    let reply;
    try {
      reply = await answer(pool, message, command);
    } catch (error) {
      const code = /** @type {{code?: string}} */ (error).code ?? "";
      if (code.startsWith("22")) {
        // a data exception (a NUL in a string, ...): this command can never be stored
        log("warning", `${label} rejected to ${ns}.dead: the database refused it: ${/** @type {Error} */ (error).message}`);
        consume.reject(message, false);
        return;
      }
      log("error", `${label} not answered, requeueing: ${/** @type {Error} */ (error).message}`);
      await new Promise((resolve) => setTimeout(resolve, RETRY_PAUSE_MS));
      consume.nack(message, false, true);
      return;
    }
    try {
      await publishReply(message, reply);
    } catch (error) {
      log("error", `${label} -> ${reply.type} not published, requeueing: ${/** @type {Error} */ (error).message}`);
      consume.nack(message, false, true);
      return;
    }
    consume.ack(message); // only now: a crash before this sends the same reply again, never none
    log("info", `${label} saga=${message.properties.correlationId} -> ${reply.type}${reply.repeat ? " (repeated answer)" : ""}`);
  }

  const { consumerTag } = await consume.consume(
    queue,
    (message) => {
      if (message === null) {
        log("error", `RabbitMQ cancelled the consumer of ${queue}; exiting ${EXIT_LOST}`);
        process.exit(EXIT_LOST);
      }
      if (stopping) {
        consume.nack(message, false, true); // raced the shutdown: back to the queue
        return;
      }
      const task = serve(message).catch((error) => log("error", `unexpected failure: ${error.stack ?? error}`));
      inflight.add(task);
      task.finally(() => inflight.delete(task));
    },
    { noAck: false },
  );
  log(
    "info",
    `consuming ${queue} on ${mask(settings.amqpUrl)} (${settings.queueType} queue, prefetch ${settings.prefetch}` +
      `${settings.failRate ? `, fail rate ${settings.failRate}` : ""}), database ${mask(settings.databaseUrl)}`,
  );

  /** SIGTERM/SIGINT: stop taking commands, let those in flight finish, close; all within the grace.
   * @param {NodeJS.Signals} signal */
  async function shutdown(signal) {
    if (stopping) {
      const code = 128 + (signal === "SIGINT" ? 2 : 15);
      log("warning", `${signal} again: exiting at once (${code})`);
      process.exit(code);
    }
    stopping = true;
    log("info", `${signal}: stopping within ${settings.shutdownGrace}s (again to exit at once), ${inflight.size} in flight`);
    const bound = setTimeout(() => {
      log("warning", `stopped: the ${settings.shutdownGrace}s bound ran out; unacked commands will be redelivered`);
      process.exit(0);
    }, settings.shutdownGrace * 1000);
    bound.unref();
    await consume.cancel(consumerTag).catch(() => {});
    await Promise.allSettled([...inflight]);
    await connection.close().catch(() => {});
    await pool.end().catch(() => {});
    log("info", "stopped");
    process.exit(0);
  }
  process.on("SIGTERM", shutdown);
  process.on("SIGINT", shutdown);
}

await main();
