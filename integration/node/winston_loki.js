// Logs through winston with the winston-loki transport (npm), the way a Node.js service
// ships to Loki: protobuf + snappy by default, or JSON with --json. Exits once the
// transport has pushed every line.
const winston = require('winston');
const LokiTransport = require('winston-loki');

const args = process.argv.slice(2);
const host = args[args.indexOf('--host') + 1];
const app = args[args.indexOf('--app') + 1];
const json = args.includes('--json');
const count = 10;

const transport = new LokiTransport({
  host,
  json,
  batching: false,
  labels: { app, env: 'test' },
  onConnectionError: (err) => { console.error('push failed:', err); process.exitCode = 1; },
});
const logger = winston.createLogger({ transports: [transport] });
for (let i = 0; i < count; i++) {
  if (i % 5 === 0) logger.error(`order ${i} failed to ship`);
  else logger.info(`order ${i} shipped`);
}
// Without batching each line is pushed at once; wait for the requests to end.
setTimeout(async () => {
  await transport.flush?.();
  logger.close();
  console.log(JSON.stringify({ sent: count }));
}, 1500);
