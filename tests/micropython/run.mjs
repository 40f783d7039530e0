// Run a MicroPython script under the WebAssembly port of MicroPython.
// usage: node run.mjs SCRIPT DIR [DIR...]  — every DIR's .py files are copied to /DIRNAME
// and put on sys.path; the script may use top-level await.
import { readFileSync, readdirSync } from "node:fs";
import { basename, join } from "node:path";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

const [script, ...dirs] = process.argv.slice(2);
const mp = await loadMicroPython({
  stdout: (line) => process.stdout.write(line + "\n"),
  stderr: (line) => process.stderr.write(line + "\n"),
});
const paths = [];
for (const dir of dirs) {
  const target = "/" + basename(dir);
  mp.FS.mkdir(target);
  for (const name of readdirSync(dir).filter((n) => n.endsWith(".py"))) {
    mp.FS.writeFile(join(target, name), readFileSync(join(dir, name)));
  }
  paths.push(target);
}
const prelude = `import sys\nsys.path[:0] = ${JSON.stringify(paths)}\n`;
try {
  await mp.runPythonAsync(prelude + readFileSync(script, "utf8"));
} catch (error) {
  process.stderr.write(String(error.message || error) + "\n");
  process.exit(1);
}
