// Refuse Node versions whose ABI breaks our native dependencies (better-sqlite3 12, koffi 3).
const [major] = process.versions.node.split('.').map(Number);
if (major < 20) {
  console.error(`capsule needs Node.js 20 or newer (found ${process.versions.node}).`);
  process.exit(1);
}
