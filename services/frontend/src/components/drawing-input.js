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
 *
 * The sketchpad draws dark ink on a white ground; an uploaded picture may be either way round
 * (the models normalise ink polarity themselves). Uploads are centre-cropped to a square.
 * The view also shows the exact image the model receives ("model input").
 */
import { Component, imageUpload, sketchPad, text } from '@marcellejs/core';

export const INPUT_SIZE = 128;

/** A 2D canvas of the given size (OffscreenCanvas would not give a PNG data URL synchronously). */
function makeCanvas(width, height) {
  const canvas = document.createElement('canvas');
  canvas.width = width;
  canvas.height = height;
  return canvas;
}

function isImageData(img) {
  return typeof ImageData !== 'undefined' && img instanceof ImageData;
}

/** Any drawable (ImageData, canvas, <img>, ImageBitmap) -> a size x size canvas (centre crop, smooth resize). */
export function toCanvas(img, size = INPUT_SIZE) {
  let source = img;
  if (isImageData(img)) {
    if (img.width === size && img.height === size) {
      const canvas = makeCanvas(size, size);
      canvas.getContext('2d').putImageData(img, 0, 0);
      return canvas;
    }
    source = makeCanvas(img.width, img.height);
    source.getContext('2d').putImageData(img, 0, 0);
  }
  const width = source.naturalWidth || source.width;
  const height = source.naturalHeight || source.height;
  if (!width || !height) {
    throw new Error('drawingInput: the image is empty (0 pixels)');
  }
  const side = Math.min(width, height);
  const canvas = makeCanvas(size, size);
  const ctx = canvas.getContext('2d');
  // What is transparent shows white on screen; the server composites on white the same way.
  ctx.fillStyle = 'white';
  ctx.fillRect(0, 0, size, size);
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = 'high';
  ctx.drawImage(source, (width - side) / 2, (height - side) / 2, side, side, 0, 0, size, size);
  return canvas;
}

/** Any drawable -> size x size ImageData. */
export function toImageData(img, size = INPUT_SIZE) {
  if (isImageData(img) && img.width === size && img.height === size) return img;
  return toCanvas(img, size).getContext('2d').getImageData(0, 0, size, size);
}

/** A PNG data URL of the model-sized image. */
export function toDataURL(img, size = INPUT_SIZE) {
  return toCanvas(img, size).toDataURL('image/png');
}

/** The image instance of the HTTP contract: `{ b64: <base64 PNG> }`. */
export function toInstance(img, size = INPUT_SIZE) {
  return { b64: toDataURL(img, size).split(',', 2)[1] };
}

/**
 * Grey levels in [0, 1], row-major, shape [1, size, size] (prepend the batch dimension for
 * ONNX: `new ort.Tensor('float32', toTensor(img), [1, 1, size, size])`).
 * Alpha is composited on white and luma uses ITU-R 601 weights, as Pillow's "L" mode does on
 * the server, so both paths see the same pixels.
 */
export function toTensor(img, size = INPUT_SIZE) {
  const { data } = toImageData(img, size);
  const out = new Float32Array(size * size);
  for (let i = 0; i < out.length; i += 1) {
    const a = data[4 * i + 3] / 255;
    const luma = (data[4 * i] * 299 + data[4 * i + 1] * 587 + data[4 * i + 2] * 114) / 1000;
    out[i] = (luma * a + 255 * (1 - a)) / 255;
  }
  return out;
}

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
