// The FourD viewer's renderer bundle: three.js + three's OrbitControls + Spark, as one ES module.
// Built by build.mjs into ../fourd/vendor/fourd-three-spark.mjs (see web/build/README.md).
export {
  BufferAttribute, BufferGeometry, Color, DoubleSide, Float32BufferAttribute, Group, LineBasicMaterial, LineSegments,
  MathUtils, Matrix4, PerspectiveCamera, Points, PointsMaterial, Quaternion, REVISION, SRGBColorSpace, Scene, Vector3,
  WebGLRenderer,
} from "three";
export { OrbitControls } from "three/examples/jsm/controls/OrbitControls.js";
export { ExtSplats, SparkRenderer, SplatMesh } from "@sparkjsdev/spark";
