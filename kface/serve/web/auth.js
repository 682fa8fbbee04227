// The server's token, for a server started with --token-file: asked for once, kept for this tab only
// (sessionStorage: gone when the tab closes, never shared with other tabs or written to disk by the page),
// and sent as "Authorization: Bearer <token>" with every request the page makes. Loaded before the
// page's other scripts, it wraps window.fetch, so they need not know whether the server wants a token.
(() => {
  "use strict";
  const KEY = "kface-token";
  const plainFetch = window.fetch.bind(window);
  let asking = null; // one question at a time, however many requests were refused together

  function withToken(init, token) {
    const headers = new Headers((init && init.headers) || {});
    if (token) headers.set("Authorization", `Bearer ${token}`);
    return { ...(init || {}), headers };
  }

  function tokenDialog() {
    const dialog = document.createElement("dialog");
    dialog.id = "token-dialog";
    dialog.innerHTML = `
      <form method="dialog">
        <p id="token-message"></p>
        <label>Token / 토큰 <input id="token-input" type="password" autocomplete="off" required></label>
        <menu>
          <button id="token-cancel" value="cancel" formnovalidate>Cancel / 취소</button>
          <button id="token-ok" value="ok">OK / 확인</button>
        </menu>
      </form>`;
    document.body.appendChild(dialog);
    return dialog;
  }

  function askToken(again) {
    if (asking) return asking;
    asking = new Promise((resolve) => {
      const dialog = document.getElementById("token-dialog") || tokenDialog();
      dialog.querySelector("#token-message").textContent = again
        ? "That token was not accepted; check it and try again. / 토큰이 맞지 않습니다. 다시 입력하세요."
        : "This server needs a token: ask whoever runs it. / 이 서버는 토큰이 필요합니다. 서버 관리자에게 받으세요.";
      const input = dialog.querySelector("#token-input");
      input.value = "";
      dialog.addEventListener("close", () => {
        const token = input.value.trim();
        resolve(dialog.returnValue === "ok" && token ? token : null);
      }, { once: true });
      dialog.showModal();
      input.focus();
    }).finally(() => { asking = null; });
    return asking;
  }

  window.fetch = async (input, init) => {
    let token = sessionStorage.getItem(KEY);
    let response = await plainFetch(input, withToken(init, token));
    while (response.status === 401) {
      const again = token !== null;
      token = await askToken(again);
      if (token === null) return response; // cancelled: the page shows the 401's message as any error
      sessionStorage.setItem(KEY, token);
      response = await plainFetch(input, withToken(init, token));
      if (response.status === 401) sessionStorage.removeItem(KEY);
    }
    return response;
  };
})();
