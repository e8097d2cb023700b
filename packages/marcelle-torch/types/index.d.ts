import type { ClassifierResults, Component, DataStore, Dataset, Instance, Model, Stream } from '@marcellejs/core';
import type { ImageLike } from './image-tensor.js';

export * from './image-tensor.js';

/** A model's input schema, as the server describes it. */
export interface InputSchema {
  kind: 'image' | string;
  size?: number;
  channels?: 1 | 3;
  value_range?: [number, number];
  [key: string]: unknown;
}

/** A prediction, with the version of the model that made it (when the server says). */
export interface VersionedClassifierResults extends ClassifierResults {
  modelVersion?: string;
}

/** A model's metadata (Ray Serve's `GET /v1/models`, or an ONNX bundle's model.json). */
export interface ModelMetadata {
  name: string;
  version?: string;
  task?: string;
  labels?: string[];
  input?: InputSchema;
  [key: string]: unknown;
}

export declare function escapeHtml(value: unknown): string;
/** "name (version): size x size, channels" for a picker. */
export declare function describeModel(metadata: ModelMetadata): string;
/** The predictions of `classifier` on each image of `$images` (failures left out). */
export declare function predictionsOf(
  $images: Stream<ImageLike>,
  classifier: { predict(x: ImageLike): Promise<ClassifierResults> },
): Stream<ClassifierResults>;

/** What the project's models share: trained in PyTorch, not in the browser. */
export declare class ExternalModel extends Model<ImageLike, ClassifierResults> {
  $status: Stream<string>;
  $error: Stream<string | null>;
  constructor(componentName: string, whereItLives: string);
}

export interface RayModelOptions {
  /** The Ray Serve application's address (relative URLs resolve against the page). */
  url: string;
  /** The model's name; left out: the first image model Serve lists. */
  model?: string | null;
  inputSize?: number;
  /** Per-request timeout, ms. */
  timeout?: number;
  title?: string;
}
export declare class RayServeError extends Error {
  status: number;
  code: string;
}
/** A Marcelle model whose predictions come from Ray Serve. */
export declare class RayModel extends ExternalModel {
  $status: Stream<'connecting' | 'ready' | 'predicting' | 'unavailable' | 'error'>;
  $ready: Stream<boolean>;
  $metadata: Stream<ModelMetadata | null>;
  $models: Stream<ModelMetadata[]>;
  $model: Stream<string | null>;
  $predictions: Stream<VersionedClassifierResults>;
  /** The version that answered the last prediction (the metadata's until then). */
  $version: Stream<string | null>;
  readonly model: string | null;
  constructor(options: RayModelOptions);
  setModel(name: string): void;
  predict(x: ImageLike | { b64: string } | unknown[]): Promise<VersionedClassifierResults>;
}
export declare function rayModel(options: RayModelOptions): RayModel;

export interface OnnxClassifierOptions {
  /** The bundle folder made by `marcelle-torch export-onnx` (model.json + model.onnx), e.g. 'onnx/digits/'. */
  bundle: string;
  title?: string;
  /** WASM threads: 'auto' or a count (threads need a cross-origin isolated page). */
  threads?: 'auto' | number;
  /** Check the bundle's version when the view is shown and every `refresh` ms while it is (0: never). */
  refresh?: number;
}
export declare const DEFAULT_THREADS: number;
export declare function wasmThreads(threads?: 'auto' | number): number;
/** A Marcelle model that runs an exported ONNX bundle in the page (onnxruntime-web, WASM). */
export declare class OnnxClassifier extends ExternalModel {
  $status: Stream<'loading' | 'ready' | 'predicting' | 'error'>;
  $progress: Stream<number>;
  $metadata: Stream<ModelMetadata | null>;
  /** The runtime in use, e.g. 'wasm (SIMD, 1 thread)'. */
  $backend: Stream<string | null>;
  $latency: Stream<number>;
  $loadTime: Stream<number>;
  $predictions: Stream<VersionedClassifierResults>;
  $ready: Stream<boolean>;
  /** The loaded bundle's model version. */
  $version: Stream<string | null>;
  constructor(options: OnnxClassifierOptions);
  setBundle(bundle: string): Promise<ModelMetadata | null>;
  /** Load the bundle again when its version (or model file) changed; true when it did. */
  reload(): Promise<boolean>;
  predict(x: ImageLike): Promise<VersionedClassifierResults>;
}
export declare function onnxClassifier(options: OnnxClassifierOptions): OnnxClassifier;

/** A run document of the backend's `runs` service. */
export interface Run {
  id: string;
  model: string;
  input: unknown;
  params?: Record<string, unknown>;
  status: 'pending' | 'running' | 'succeeded' | 'failed' | 'canceled';
  progress?: number;
  partial?: string | null;
  result?: { label?: unknown; image?: string; [key: string]: unknown } | null;
  error?: string | null;
  worker?: string | null;
  createdAt?: string;
  updatedAt?: string;
}
/** A model a connected worker serves. */
export interface ServedModel {
  name: string;
  task: 'classification' | 'generation' | string;
  channels?: 1 | 3;
  size?: number;
  workers?: number;
}
export declare const ACTIVE: string[];
export declare function normalizeRun(run: Record<string, unknown>): Run;
export declare class LoginDismissed extends Error {}
export interface RunClientOptions {
  backendUrl?: string;
  dataStore?: DataStore;
  service?: string;
  historySize?: number;
}
/** Runs through the Marcelle backend, with Marcelle's dataStore (and its login dialog). */
export declare class RunClient {
  url: string;
  $status: Stream<'idle' | 'connecting' | 'login' | 'logged-out' | 'ready' | 'reconnecting' | 'error'>;
  $error: Stream<string | null>;
  $runs: Stream<Run[]>;
  $user: Stream<{ email: string; [key: string]: unknown } | null>;
  $models: Stream<ServedModel[]>;
  constructor(options: RunClientOptions);
  start(): Promise<void>;
  get(id: string): Run | null;
  create(model: string, input: unknown, params?: Record<string, unknown>): Promise<Run>;
  cancel(id: string): Promise<Run>;
  logout(): Promise<void>;
}
export declare function runClient(options: RunClientOptions): RunClient;

export declare const TERMINAL: string[];
export declare class RunError extends Error {
  run: Run;
}
export interface BackendRunModelOptions {
  /** A remote Marcelle dataStore, or `url`, the backend's address. */
  dataStore?: DataStore;
  url?: string;
  /** The model's name; left out: the first model the connected workers serve. */
  model?: string | null;
  service?: string;
  title?: string;
  /** The prefix of the view's data-testid hooks (default 'run'). */
  testid?: string;
}
/** A Marcelle model whose predict() is a run in the Marcelle backend. */
/** A model version a training run made (a model folder in the worker's store). */
export interface ModelVersion {
  model: string;
  version: string;
  parent: string;
  labels: string[];
  metrics: Record<string, unknown>;
  /** The examples' sha256. */
  dataset?: string;
}
/** What a publish run answers: the version now published, and the one before (null: the model's own). */
export interface PublishResult {
  model: string;
  version: string | null;
  previous: string | null;
}

export declare class BackendRunModel<R = unknown> extends Model<unknown, R> {
  client: RunClient;
  $status: Stream<'idle' | Run['status']>;
  $progress: Stream<number>;
  $partial: Stream<string | null>;
  /** The run's image shown by the view (the result's image, else the last intermediate one). */
  $image: Stream<ImageData | ImageData[]>;
  $run: Stream<Run | null>;
  $result: Stream<R | null>;
  $error: Stream<string | null>;
  $connection: RunClient['$status'];
  $models: Stream<ServedModel[]>;
  $model: Stream<string | null>;
  $runs: Stream<Run[]>;
  readonly model: string | null;
  constructor(options: BackendRunModelOptions);
  setModel(name: string): void;
  connect(): Promise<void>;
  /** Create a run on `input` (an image is sent as {b64}); resolves with its result. */
  predict(input: unknown, params?: Record<string, unknown>): Promise<R>;
  /** A training run on a Marcelle dataset (by its name) or instances `{x, y}`; `$training` follows it. */
  train(
    datasetOrExamples: Dataset<Instance> | Array<{ x: ImageLike | string | { b64: string }; y: string }>,
    options?: { epochs?: number },
  ): Promise<ModelVersion>;
  /** A publish run: `version` (12 hex characters), or null for the model's own weights. */
  publish(version: string | null): Promise<PublishResult>;
  cancel(id?: string): Promise<Run | null>;
}
export declare function backendRunModel<R = unknown>(options: BackendRunModelOptions): BackendRunModel<R>;

export declare const STATUS_TEXT: Record<string, string>;
export declare function describeRun(run: Run): string;
export declare function runLine(run: Run, describe?: (run: Run) => string): string;
export declare class RunsHistory extends Component {
  constructor(source: { $runs: Stream<Run[]> }, options?: { title?: string; describe?: (run: Run) => string });
}
export declare function runsHistory(
  source: { $runs: Stream<Run[]> },
  options?: { title?: string; describe?: (run: Run) => string },
): RunsHistory;

/** The image input: sketchpad + upload (1 channel) or upload + webcam (3 channels). */
export declare class ImageInput extends Component {
  $images: Stream<ImageData>;
  size: number;
  channels: 1 | 3;
  constructor(options?: { size?: number; channels?: 1 | 3; title?: string });
  /** Offer what the model's input schema takes. */
  follow(input: InputSchema): void;
}
export declare function imageInput(options?: { size?: number; channels?: 1 | 3; title?: string }): ImageInput;

export interface Choice {
  value: string;
  label?: string;
  disabled?: boolean;
}
/** Which of the served models a page uses. */
export declare class ModelPicker extends Component {
  $value: Stream<string | null>;
  constructor(options?: { title?: string; testid?: string; empty?: string });
  setChoices(choices: Choice[], preferred?: string | null): void;
  choose(value: string): void;
}
export declare function modelPicker(options?: { title?: string; testid?: string; empty?: string }): ModelPicker;
