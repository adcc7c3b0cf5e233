// Validate an AsyncAPI document with the official parser: errors are printed and make the exit status 1.
// Usage: node schemas/validate/validate.mjs schemas/asyncapi.yaml   (after npm ci --prefix schemas/validate)
import { Parser, fromFile } from '@asyncapi/parser';
const parser = new Parser();
const { document, diagnostics } = await fromFile(parser, process.argv[2]).parse();
const errors = diagnostics.filter((d) => d.severity === 0);
for (const d of diagnostics) console.log(`${['error','warning','info','hint'][d.severity]} ${d.code} ${d.path.join('.')}: ${d.message}`);
console.log(`${errors.length} error(s), ${diagnostics.length - errors.length} other diagnostic(s)`);
process.exit(errors.length || !document ? 1 : 0);
