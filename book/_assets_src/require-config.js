// RequireJS configuration for the ipywidgets bundle that the book serves from _static/.
// The widget bundles find their fonts next to their own AMD module URL, which RequireJS
// derives from baseUrl. The default baseUrl is the page's folder (book/ for a chapter), so
// point it at _static/, where `make book` puts @jupyter-widgets/. This script must load
// before require.js, which reads a global `require` object as its configuration.
// eslint-disable-next-line no-unused-vars
var require = { baseUrl: new URL(".", document.currentScript.src).href };
