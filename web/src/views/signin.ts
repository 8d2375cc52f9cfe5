// Sign-in: paste the API token; it is checked against the server before it is kept.
import { Api, ApiError } from '../api.js';
import { h } from '../dom.js';
import type { View } from '../app.js';

export function signInView(base: string, message: string | undefined, onSignedIn: (token: string) => void): View {
  const input = h('input', {
    id: 'token',
    name: 'token',
    type: 'password',
    autocomplete: 'current-password',
    spellcheck: 'false',
    required: true,
    'aria-describedby': 'token-help token-error',
  });
  const errorEl = h('p', { id: 'token-error', class: 'field-error', role: 'alert' });
  if (message) errorEl.textContent = message;
  const submit = h('button', { type: 'submit', class: 'primary' }, 'Sign in');
  const heading = h('h1', { tabindex: '-1' }, 'Sign in to capsule');
  const form = h(
    'form',
    { class: 'card signin', novalidate: true },
    heading,
    h('label', { for: 'token' }, 'API token'),
    input,
    h(
      'p',
      { id: 'token-help', class: 'hint' },
      'The admin token is in ',
      h('code', null, '$CAPSULE_DATA_DIR/admin-token'),
      ' on the server. It is kept only for this browser tab (sessionStorage).',
    ),
    errorEl,
    h('div', { class: 'form-actions' }, submit),
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const token = input.value.trim();
    if (!token) {
      errorEl.textContent = 'Enter an API token.';
      input.setAttribute('aria-invalid', 'true');
      input.focus();
      return;
    }
    submit.disabled = true;
    submit.textContent = 'Checking…';
    form.setAttribute('aria-busy', 'true');
    errorEl.textContent = '';
    try {
      await new Api(base, token).listVms();
      onSignedIn(token);
    } catch (err) {
      const msg =
        err instanceof ApiError && err.status === 401
          ? 'That token was not accepted by the server. Check it and try again.'
          : err instanceof ApiError
            ? err.describe()
            : String(err);
      errorEl.textContent = msg;
      input.setAttribute('aria-invalid', 'true');
      input.focus();
      input.select();
    } finally {
      submit.disabled = false;
      submit.textContent = 'Sign in';
      form.removeAttribute('aria-busy');
    }
  });
  const el = h('main', { class: 'center', id: 'main' }, form);
  return { el, focus: input, destroy: () => undefined };
}
