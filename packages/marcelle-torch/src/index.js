/**
 * marcelle-torch: Marcelle components for PyTorch models served by the marcelle-torch Python
 * package — Ray Serve (rayModel), ONNX in the browser (onnxClassifier) and runs through the
 * Marcelle backend (backendRunModel, runsHistory) — with the image input and model picker
 * that go with them.
 */
export { ExternalModel, describeModel, escapeHtml, predictionsOf } from './external-model.js';
export { RayModel, RayServeError, rayModel } from './ray-model.js';
export { DEFAULT_THREADS, OnnxClassifier, onnxClassifier, wasmThreads } from './onnx-classifier.js';
export { ACTIVE, LoginDismissed, RunClient, normalizeRun, runClient } from './run-client.js';
export { BackendRunModel, RunError, TERMINAL, backendRunModel } from './backend-run-model.js';
export { RunsHistory, STATUS_TEXT, describeRun, runLine, runsHistory } from './runs-history.js';
export { ImageInput, imageInput } from './image-input.js';
export { ModelPicker, modelPicker } from './model-picker.js';
export {
  INPUT_SIZE,
  fromDataURL,
  isImage,
  toCanvas,
  toDataURL,
  toImageData,
  toInstance,
  toTensor,
} from './image-tensor.js';
