/**
 * A minimal in-memory HTTP object store for the http-store example:
 * PUT /key stores the body, GET /key returns it (404 if absent).
 *
 *   node dist/examples/object-store-server.js [PORT]    (listens on 127.0.0.1)
 */
import * as http from 'node:http';

export function startObjectStore(port: number): Promise<http.Server> {
  const objects = new Map<string, Buffer>();
  const server = http.createServer((req, res) => {
    const key = req.url ?? '/';
    if (req.method === 'GET') {
      const body = objects.get(key);
      res.writeHead(body ? 200 : 404).end(body);
      return;
    }
    if (req.method === 'PUT') {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        objects.set(key, Buffer.concat(chunks));
        res.writeHead(204).end();
      });
      return;
    }
    res.writeHead(405).end();
  });
  // What Node does by default (400, or 408 for a timed-out request), logged: a client that saw an
  // error answer can then be matched with its cause.
  server.on('clientError', (err: NodeJS.ErrnoException, socket) => {
    const timedOut = err.code === 'ERR_HTTP_REQUEST_TIMEOUT';
    console.error(`object store: client error ${err.code ?? err.message}${timedOut ? ', answering 408' : ''}`);
    if (socket.writable && err.code !== 'ECONNRESET') {
      socket.end(timedOut ? 'HTTP/1.1 408 Request Timeout\r\n\r\n' : 'HTTP/1.1 400 Bad Request\r\n\r\n');
    }
    socket.destroy();
  });
  // Idle connections stay open longer than a client's pause between requests, so a busy client
  // never sends a request on a connection the store is closing at that moment.
  server.keepAliveTimeout = 65_000;
  server.headersTimeout = 66_000;
  return new Promise((resolve) => server.listen(port, '127.0.0.1', () => resolve(server)));
}

if (require.main === module) {
  const port = Number(process.argv[2] ?? 8080);
  void startObjectStore(port).then(() => console.log(`object store listening on http://127.0.0.1:${port}/`));
}
