// Small HTTP helpers shared by the API's routes and the E2B layer.

/**
 * A request's Content-Length as a byte count, or undefined when absent or not a plain decimal
 * (a chunked body has none). Node's HTTP server holds the body to exactly this length.
 */
export function contentLength(header: string | undefined): number | undefined {
  if (header === undefined || !/^\d{1,15}$/.test(header.trim())) return undefined;
  return Number(header.trim());
}
