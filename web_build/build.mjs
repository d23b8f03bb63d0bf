// Reproduces web/fourd/vendor/fourd-three-spark.mjs and its LICENSES file from the pinned npm packages:
//   cd web_build && npm ci && npm run build
// The output is one self-contained ES module (Spark's WebAssembly and its worker are already inlined in
// Spark's own dist build, so nothing is fetched at run time). The ".mjs" name keeps ComfyUI from loading
// it as a frontend extension: ComfyUI lists only "**/*.js" under a pack's WEB_DIRECTORY.
import { build } from "esbuild";
import { readFileSync, writeFileSync, mkdirSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const outDir = join(here, "..", "web", "fourd", "vendor");
const outFile = join(outDir, "fourd-three-spark.mjs");
const pkg = (name) => JSON.parse(readFileSync(join(here, "node_modules", name, "package.json"), "utf8"));
const three = pkg("three"), spark = pkg("@sparkjsdev/spark"), fflate = pkg("fflate");

mkdirSync(outDir, { recursive: true });
await build({
  entryPoints: [join(here, "entry.mjs")],
  bundle: true,
  format: "esm",
  platform: "browser",
  target: "es2020",
  minify: true,
  legalComments: "none", // the licences are written beside the bundle (LICENSES)
  sourcemap: false,
  outfile: outFile,
  banner: {
    js: `// three.js ${three.version} (MIT), @sparkjsdev/spark ${spark.version} (MIT), fflate ${fflate.version} (MIT). ` +
      "Licences: LICENSES beside this file. Built by web_build/build.mjs; do not edit.",
  },
  logLevel: "warning",
});

const licence = (name, file) => readFileSync(join(here, "node_modules", name, file), "utf8").trim();
const sections = [
  [`three ${three.version}`, "three", "LICENSE"],
  [`@sparkjsdev/spark ${spark.version}`, "@sparkjsdev/spark", "LICENSE"],
  [`fflate ${fflate.version} (a dependency of Spark)`, "fflate", "LICENSE"],
];
writeFileSync(join(outDir, "LICENSES"),
  "Licences of the code bundled in fourd-three-spark.mjs\n\n" +
  sections.map(([title, name, file]) => `== ${title} ==\n\n${licence(name, file)}\n`).join("\n"));
console.log(`wrote ${outFile} (${statSync(outFile).size} bytes) and LICENSES`);
