/**
 * An image as a model takes it, computed in the page exactly as the server computes it from a
 * PNG (marcelle_torch.models.inputs.decode_image), so that a model run in the browser (ONNX)
 * and the same model behind Ray Serve or the backend see the same tensor:
 *
 * - transparent pixels are composited on white (a canvas export is transparent where nothing
 *   is drawn);
 * - a non-square image is padded to a square with the median colour of its border (never
 *   cropped: a digit near an edge must stay whole), centred, then resized to `size`;
 * - grey is ITU-R 601 luma (Pillow's "L" mode), RGB is kept for 3 channels;
 * - values are scaled from [0, 1] into the input's `range` (the spec's `value_range`).
 *
 * No Marcelle import here: the functions are plain DOM code, loaded as is by the
 * preprocessing parity test.
 */

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

/** Any drawable -> a canvas of its own size with transparency composited on white. */
function onWhite(img) {
  let width;
  let height;
  let source = img;
  if (isImageData(img)) {
    ({ width, height } = img);
    source = makeCanvas(width, height);
    source.getContext('2d').putImageData(img, 0, 0);
  } else {
    width = img.naturalWidth || img.width;
    height = img.naturalHeight || img.height;
  }
  if (!width || !height) {
    throw new Error('the image is empty (0 pixels)');
  }
  const canvas = makeCanvas(width, height);
  const ctx = canvas.getContext('2d');
  ctx.fillStyle = 'white';
  ctx.fillRect(0, 0, width, height);
  ctx.drawImage(source, 0, 0);
  return canvas;
}

/** The median of each RGB channel over the border pixels (the server pads with it). */
function borderColour(canvas) {
  const { width, height } = canvas;
  const { data } = canvas.getContext('2d').getImageData(0, 0, width, height);
  const channels = [[], [], []];
  const add = (x, y) => {
    const i = 4 * (y * width + x);
    for (let c = 0; c < 3; c += 1) channels[c].push(data[i + c]);
  };
  for (let x = 0; x < width; x += 1) {
    add(x, 0);
    add(x, height - 1);
  }
  for (let y = 0; y < height; y += 1) {
    add(0, y);
    add(width - 1, y);
  }
  return channels.map((values) => {
    values.sort((a, b) => a - b);
    const mid = values.length >> 1;
    return values.length % 2 ? values[mid] : Math.round((values[mid - 1] + values[mid]) / 2);
  });
}

/** Any drawable (ImageData, canvas, <img>, ImageBitmap) -> a size x size canvas (padded square, smooth resize). */
export function toCanvas(img, size = INPUT_SIZE) {
  if (isImageData(img) && img.width === size && img.height === size) {
    const canvas = makeCanvas(size, size);
    canvas.getContext('2d').putImageData(img, 0, 0);
    return canvas;
  }
  const flat = onWhite(img);
  const side = Math.max(flat.width, flat.height);
  const square = makeCanvas(side, side);
  const ctx = square.getContext('2d');
  if (flat.width !== flat.height) {
    const [r, g, b] = borderColour(flat);
    ctx.fillStyle = `rgb(${r}, ${g}, ${b})`;
    ctx.fillRect(0, 0, side, side);
  }
  ctx.drawImage(flat, Math.floor((side - flat.width) / 2), Math.floor((side - flat.height) / 2));
  const canvas = makeCanvas(size, size);
  const out = canvas.getContext('2d');
  out.imageSmoothingEnabled = true;
  out.imageSmoothingQuality = 'high';
  out.drawImage(square, 0, 0, side, side, 0, 0, size, size);
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
 * The model's input tensor, row-major, shape [channels, size, size] (prepend the batch
 * dimension for ONNX). `channels` (1 or 3) and `range` come from the model's input schema
 * (`metadata.input.channels`, `metadata.input.range`).
 */
export function toTensor(img, size = INPUT_SIZE, { channels = 1, range = [0, 1] } = {}) {
  if (channels !== 1 && channels !== 3) {
    throw new Error(`an image input has 1 or 3 channels, not ${channels}`);
  }
  const { data } = toImageData(img, size);
  const [lo, hi] = range;
  const scale = (v) => lo + (v / 255) * (hi - lo);
  const plane = size * size;
  const out = new Float32Array(channels * plane);
  for (let i = 0; i < plane; i += 1) {
    const a = data[4 * i + 3] / 255;
    // Composited on white, as onWhite() does for images that are not model-sized yet.
    const [r, g, b] = [0, 1, 2].map((c) => data[4 * i + c] * a + 255 * (1 - a));
    if (channels === 1) {
      out[i] = scale((r * 299 + g * 587 + b * 114) / 1000);
    } else {
      out[i] = scale(r);
      out[plane + i] = scale(g);
      out[2 * plane + i] = scale(b);
    }
  }
  return out;
}

/** An image's data URL (a PNG the server sent) -> ImageData at its own size, for `imageDisplay`. */
export async function fromDataURL(url) {
  const img = new Image();
  img.src = url;
  await img.decode();
  const canvas = makeCanvas(img.naturalWidth, img.naturalHeight);
  const ctx = canvas.getContext('2d');
  ctx.drawImage(img, 0, 0);
  return ctx.getImageData(0, 0, canvas.width, canvas.height);
}

/** Whether `x` is an image the helpers above take (ImageData, a canvas, an <img>, an ImageBitmap). */
export function isImage(x) {
  return (
    (typeof ImageData !== 'undefined' && x instanceof ImageData) ||
    (typeof HTMLCanvasElement !== 'undefined' && x instanceof HTMLCanvasElement) ||
    (typeof HTMLImageElement !== 'undefined' && x instanceof HTMLImageElement) ||
    (typeof ImageBitmap !== 'undefined' && x instanceof ImageBitmap)
  );
}
