/** An image the helpers take: ImageData, a canvas, an <img> or an ImageBitmap. */
export type ImageLike = ImageData | HTMLCanvasElement | HTMLImageElement | ImageBitmap;

/** The side, in pixels, of the images the helpers make by default. */
export declare const INPUT_SIZE: number;
export declare function isImage(x: unknown): x is ImageLike;
/** The image on a white ground, padded to a square and resized to `size`. */
export declare function toCanvas(img: ImageLike, size?: number): HTMLCanvasElement;
export declare function toImageData(img: ImageLike, size?: number): ImageData;
export declare function toDataURL(img: ImageLike, size?: number): string;
/** An image's data URL -> ImageData at its own size (for Marcelle's imageDisplay). */
export declare function fromDataURL(url: string): Promise<ImageData>;
/** The JSON instance of the Ray Serve / backend contract: a base64 PNG. */
export declare function toInstance(img: ImageLike, size?: number): { b64: string };
/** A [channels, size, size] tensor scaled into `range`, as the server computes it. */
export declare function toTensor(
  img: ImageLike,
  size?: number,
  options?: { channels?: 1 | 3; range?: [number, number] },
): Float32Array;
