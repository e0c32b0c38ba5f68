// Validates cert-manager resources (tests/k8s/validate.py hands them over
// on stdin as a JSON array) against the schemas of cert-manager's CRDs as
// @kubernetes-models/cert-manager ships them; prints one JSON array: the
// problems of each document (empty when valid), or null for a kind it has
// no model of.
import * as v1 from "@kubernetes-models/cert-manager/cert-manager.io/v1";

const chunks = [];
for await (const c of process.stdin) chunks.push(c);
const docs = JSON.parse(Buffer.concat(chunks).toString());
const out = docs.map((doc) => {
  const Model = doc.apiVersion === "cert-manager.io/v1" ? v1[doc.kind] : undefined;
  if (typeof Model !== "function") return null;
  try {
    new Model(doc).validate();
    return [];
  } catch (e) {
    return String(e.message).split("\n").filter((l) => l.trim());
  }
});
console.log(JSON.stringify(out));
