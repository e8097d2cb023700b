/**
 * imageInput — the app's shared input: whatever suits the model's input, merged into one
 * stream of model-sized images. A 1-channel model (a drawing classifier) gets Marcelle's
 * `sketchPad` and an `imageUpload`; a 3-channel (RGB) model gets the `imageUpload` and the
 * `webcam` with a Capture button. `follow(inputSchema)` switches between the two as the page's
 * model changes (the schema is the model's metadata `input`: `{kind: 'image', size, channels}`).
 *
 * ```js
 * const input = imageInput();
 * dash.page('My page').sidebar(input);
 * classifier.$metadata.subscribe((meta) => meta && input.follow(meta.input));
 * input.$images.subscribe((img) => ...);      // ImageData, size x size, RGBA
 * toInstance(img);                             // -> { b64 } for the Ray Serve / backend JSON contract
 * toTensor(img, size, { channels });           // -> Float32Array [channels, size, size] in [0, 1] (ONNX)
 * ```
 * (`toInstance`, `toTensor`: image-tensor.js, the server's preprocessing in the page.)
 *
 * The sketchpad draws dark ink on a white ground; an uploaded picture may be either way round
 * (the drawing models normalise ink polarity themselves). A non-square image is padded to a
 * square. The view also shows the exact image the model receives ("model input").
 *
 * Stable hooks (`data-testid`): image-input (data-channels, data-size), image-input-sketch,
 * image-input-upload, image-input-webcam, image-input-capture, image-input-preview,
 * image-input-image (the model input).
 */
import { Component, button, createStream, imageUpload, sketchPad, text, webcam } from '@marcellejs/core';
import { INPUT_SIZE, toDataURL, toImageData } from './image-tensor.js';

// Which parts each kind of image model gets.
const PARTS_FOR_CHANNELS = {
  1: ['sketch', 'upload', 'preview'],
  3: ['upload', 'webcam', 'capture', 'preview'],
};

export class ImageInput extends Component {
  constructor({ size = INPUT_SIZE, channels = 1, title = 'input' } = {}) {
    super();
    this.title = title;
    this.size = size;
    this.channels = channels;
    this.sketchPad = sketchPad();
    this.sketchPad.title = 'draw';
    this.imageUpload = imageUpload({ width: size, height: size });
    this.imageUpload.title = 'upload an image';
    this.webcam = webcam({ width: size, height: size });
    this.webcam.title = 'or use the webcam';
    this.capture = button('Capture');
    this.capture.title = '';
    this.preview = text('Draw or upload an image: the model sees it here.');
    this.preview.title = 'model input';
    this.parts = {
      sketch: this.sketchPad,
      upload: this.imageUpload,
      webcam: this.webcam,
      capture: this.capture,
      preview: this.preview,
    };
    /** Captured webcam frames. A click before the camera's first frame takes that frame when it
     * comes: the webcam's frames start a moment after it is switched on, and a click is never lost. */
    const captured = createStream(undefined);
    let latestFrame = null;
    let clickWaitsForFrame = false;
    this.webcam.$ready.subscribe((ready) => {
      if (!ready) latestFrame = null; // never a frame from before the camera was switched off
    });
    this.webcam.$images.subscribe((frame) => {
      latestFrame = frame;
      if (clickWaitsForFrame && frame) {
        clickWaitsForFrame = false;
        captured.set(frame);
      }
    });
    this.capture.$click.subscribe(() => {
      if (latestFrame) captured.set(latestFrame);
      else clickWaitsForFrame = true;
    });
    /** Model-sized images (ImageData) from every part, one stream. */
    this.$images = this.sketchPad.$images
      .merge(this.imageUpload.$images)
      .merge(captured.filter(Boolean))
      .map((img) => toImageData(img, this.size));
    this.$images.subscribe((img) => {
      this.preview.$value.set(
        `<img data-testid="image-input-image" alt="model input" src="${toDataURL(img, this.size)}" ` +
          `width="${this.size}" height="${this.size}" style="image-rendering: pixelated; border: 1px solid #ccc" />` +
          `<br><small style="color:#6b7280">${this.size}×${this.size}, ${this.channels === 3 ? 'RGB' : 'grey'}</small>`,
      );
    });
    this.start();
  }

  /** Follow a model's input schema: its size, and the parts that suit its channels. */
  follow(input) {
    if (!input || input.kind !== 'image') return;
    const channels = input.channels === 3 ? 3 : 1;
    const size = Number.isInteger(input.size) && input.size > 0 ? input.size : this.size;
    if (channels === this.channels && size === this.size) return;
    this.channels = channels;
    this.size = size;
    this.showParts();
  }

  showParts() {
    const shown = PARTS_FOR_CHANNELS[this.channels];
    for (const { name, div } of this.mounted ?? []) div.style.display = shown.includes(name) ? '' : 'none';
    if (!shown.includes('webcam')) this.webcam.$active.set(false); // no camera left on, unseen
    if (this.root) {
      this.root.dataset.channels = String(this.channels);
      this.root.dataset.size = String(this.size);
    }
  }

  mount(target) {
    const t = target || document.querySelector(`#${this.id}`);
    if (!t) return;
    this.destroy();
    this.root = t;
    t.dataset.testid = 'image-input';
    // Like Marcelle's confidencePlot: each part mounts in a div of ours, with a stable hook.
    this.mounted = Object.entries(this.parts).map(([name, component]) => {
      const div = document.createElement('div');
      div.id = `${t.id}-${component.id}`;
      div.dataset.testid = `image-input-${name}`;
      t.appendChild(div);
      component.mount(div);
      return { name, div, component };
    });
    this.showParts();
  }

  destroy() {
    for (const component of Object.values(this.parts)) component.destroy();
    for (const { div } of this.mounted ?? []) div.remove();
    this.mounted = [];
  }
}

export function imageInput(options) {
  return new ImageInput(options);
}
