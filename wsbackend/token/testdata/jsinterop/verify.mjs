// Verifies tokens with jose, the usual JWT library of Node.js, the way a
// backend written in JavaScript would. Run by TestTokensVerifyInNodeJose in
// interop_test.go, which writes the cases to stdin as JSON:
//
//   [{"name", "token", "alg": "EdDSA"|"HS256", "algorithms": [...],
//     "key": SPKI PEM for EdDSA, base64url secret for HS256,
//     "audience", "now": Unix seconds}]
//
// and reads one JSON result per case from stdout:
//
//   {"name", "ok": true, "header", "payload"}  or  {"name", "ok": false, "code", "message"}
import { importSPKI, jwtVerify } from 'jose';

async function read(stream) {
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

async function key(c) {
  if (c.alg === 'EdDSA') return importSPKI(c.key, 'EdDSA');
  return new Uint8Array(Buffer.from(c.key, 'base64url'));
}

async function check(c) {
  try {
    const { payload, protectedHeader } = await jwtVerify(c.token, await key(c), {
      algorithms: c.algorithms ?? [c.alg],
      audience: c.audience,
      currentDate: new Date(c.now * 1000),
      clockTolerance: 5, // the Go verifier's DefaultLeeway
      typ: 'JWT',
      requiredClaims: ['aud', 'iat', 'nbf', 'exp', 'jti'],
    });
    return { name: c.name, ok: true, header: protectedHeader, payload };
  } catch (err) {
    return { name: c.name, ok: false, code: err.code ?? err.name, message: err.message };
  }
}

const cases = JSON.parse(await read(process.stdin));
for (const c of cases) {
  process.stdout.write(JSON.stringify(await check(c)) + '\n');
}
