/**
 * drawingInput — the app's shared input: a Marcelle `sketchPad` and an `imageUpload`, merged
 * into one stream of model-sized images.
 *
 * ```js
 * const input = drawingInput({ size: 128 });
 * dash.page('My page').sidebar(input);
 * input.$images.subscribe((img) => ...);      // ImageData, size x size, RGBA
 * toInstance(img);                             // -> { b64 } for the Ray Serve / backend JSON contract
 * toTensor(img, 128);                          // -> Float32Array [1, 128, 128] in [0, 1] (ONNX in the browser)
 * ```
 * (`toInstance`, `toTensor`: image-tensor.js, the server's preprocessing in the page.)
 *
 * The sketchpad draws dark ink on a white ground; an uploaded picture may be either way round
 * (the models normalise ink polarity themselves). A non-square upload is padded to a square.
 * The view also shows the exact image the model receives ("model input").
 */
import { Component, imageUpload, sketchPad, text } from '@marcellejs/core';
import { INPUT_SIZE, toDataURL, toImageData } from './image-tensor.js';

export class DrawingInput extends Component {
  constructor({ size = INPUT_SIZE, title = 'input' } = {}) {
    super();
    this.title = title;
    this.size = size;
    this.sketchPad = sketchPad();
    this.sketchPad.title = 'draw a digit';
    this.imageUpload = imageUpload({ width: size, height: size });
    this.imageUpload.title = 'or upload an image';
    this.preview = text('Draw or upload an image: the model sees it here.');
    this.preview.title = `model input (${size}×${size})`;
    /** Model-sized images (ImageData) from the sketchpad and the upload, one stream. */
    this.$images = this.sketchPad.$images.merge(this.imageUpload.$images).map((img) => toImageData(img, size));
    this.$images.subscribe((img) => {
      this.preview.$value.set(
        `<img data-testid="drawing-input-image" alt="model input" src="${toDataURL(img, size)}" ` +
          `width="${size}" height="${size}" style="image-rendering: pixelated; border: 1px solid #ccc" />`,
      );
    });
    this.start();
  }

  mount(target) {
    const t = target || document.querySelector(`#${this.id}`);
    if (!t) return;
    this.destroy();
    // Like Marcelle's confidencePlot: each part mounts in a div of ours, with a stable hook.
    this.mounted = [
      ['sketch', this.sketchPad],
      ['upload', this.imageUpload],
      ['preview', this.preview],
    ].map(([name, component]) => {
      const div = document.createElement('div');
      div.id = `${t.id}-${component.id}`;
      div.dataset.testid = `drawing-input-${name}`;
      t.appendChild(div);
      component.mount(div);
      return { div, component };
    });
  }

  destroy() {
    for (const component of [this.sketchPad, this.imageUpload, this.preview]) {
      component.destroy();
    }
    for (const { div } of this.mounted ?? []) {
      div.remove();
    }
    this.mounted = [];
  }
}

export function drawingInput(options) {
  return new DrawingInput(options);
}
