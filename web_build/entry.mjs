// The FourD viewer's renderer bundle: three.js + three's OrbitControls + Spark, as one ES module.
// Built by build.mjs into ../web/fourd/vendor/fourd-three-spark.mjs (see web_build/README.md).
export {
  BufferAttribute, BufferGeometry, Color, Float32BufferAttribute, Group, LineBasicMaterial, LineSegments,
  PerspectiveCamera, Points, PointsMaterial, Quaternion, REVISION, SRGBColorSpace, Scene, Vector2, Vector3,
  WebGLRenderer,
} from "three";
export { OrbitControls } from "three/examples/jsm/controls/OrbitControls.js";
export { ExtSplats, SparkRenderer, SplatMesh } from "@sparkjsdev/spark";
