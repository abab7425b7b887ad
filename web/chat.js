// Chat helpers: the server's size limit in UTF-8 bytes, and message text made into DOM nodes
// with clickable links, never through innerHTML.

/** The server refuses chat text over --max-chat-bytes (default 4096) bytes of UTF-8. */
export const MAX_CHAT_BYTES = 4096;

const encoder = new TextEncoder();

/** Bytes of `text` in UTF-8, as the server counts them. */
export function utf8Length(text) {
  return encoder.encode(text).length;
}

// http(s) URLs and bare www. hosts; trailing punctuation is left out of the link.
const URL_RE = /\b(?:https?:\/\/|www\.)[^\s<>"'`]+/gi;
const TRAILING = /[.,;:!?)\]}'"»”’]+$/;

/** Splits text into [{text}|{text, href}] parts; only http and https links are made. */
export function linkParts(text) {
  const parts = [];
  let last = 0;
  for (const match of text.matchAll(URL_RE)) {
    let raw = match[0];
    const trail = raw.match(TRAILING);
    if (trail) {
      let kept = raw.slice(0, raw.length - trail[0].length);
      // Give back a ")" that closes a "(" inside the URL (Wikipedia links).
      const opens = kept.split('(').length - 1;
      const closes = kept.split(')').length - 1;
      if (trail[0].startsWith(')') && opens > closes) kept += ')';
      raw = kept;
    }
    if (!raw) continue;
    const start = match.index;
    let href = null;
    try {
      const url = new URL(raw.toLowerCase().startsWith('www.') ? `https://${raw}` : raw);
      if (url.protocol === 'http:' || url.protocol === 'https:') href = url.href;
    } catch {
      href = null;
    }
    if (!href) continue;
    if (start > last) parts.push({ text: text.slice(last, start) });
    parts.push({ text: raw, href });
    last = start + raw.length;
  }
  if (last < text.length) parts.push({ text: text.slice(last) });
  return parts;
}

/** A DocumentFragment of text nodes and <a> elements for one message. */
export function renderText(doc, text) {
  const fragment = doc.createDocumentFragment();
  for (const part of linkParts(text)) {
    if (part.href) {
      const a = doc.createElement('a');
      a.href = part.href;
      a.textContent = part.text;
      a.target = '_blank';
      a.rel = 'noopener noreferrer nofollow';
      fragment.append(a);
    } else {
      fragment.append(doc.createTextNode(part.text));
    }
  }
  return fragment;
}
