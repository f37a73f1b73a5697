/*
 * accessgate_ticket_closed.js -- ServiceNow business rule: tell accessgate that a ticket it
 * opened has closed, with a signed webhook.
 *
 * Business rule record (System Definition > Business Rules > New):
 *   Name ............ accessgate: ticket closed
 *   Table ........... sc_req_item   (or sc_task, incident, or a custom task table: the table
 *                                    accessgate writes to; one rule per table)
 *   Active .......... true
 *   Advanced ........ true
 *   When ............ async
 *   Insert .......... false
 *   Update .......... true
 *   Delete/Query .... false
 *   Filter Conditions  [Active] [changes to] [false]
 *                      AND [Correlation ID] [starts with] [accessgate:]
 *   Condition ....... current.active.changesTo(false) && String(current.correlation_id).indexOf('accessgate:') == 0
 *                     (the same test as the filter, in script form; either one is enough, both
 *                     is harmless. See "Async rules and changesTo" below. The script form
 *                     `current.correlation_id.startsWith('accessgate:')` is avoided on purpose:
 *                     current.correlation_id is a GlideElement, not a JavaScript string, and
 *                     String.prototype.startsWith does not exist in ES5 compatibility mode.)
 *   Script .......... this file, verbatim.
 *
 * Async rules and changesTo: an async rule's conditions (filter and Condition field) are
 * evaluated in the transaction that updates the record, when the change is known; the script
 * itself runs later in a scheduler worker, with `current` re-read from the database and
 * `previous` = null. So `changesTo` works in the conditions but must not be used in this
 * script, and the script only relies on `current`. Caveat: if the instance sets the system
 * property glide.businessrule.async_condition_check=true, conditions are evaluated a second
 * time in the worker, where nothing "changes" any more, and the rule would never run; in that
 * case use When = after with the same conditions (see README.md).
 *
 * Needs (see README.md):
 *   - system property x_accessgate.webhook_secret (type password2): the shared HMAC secret,
 *     ASCII (e.g. `openssl rand -hex 32`). Read with gs.getProperty; never logged.
 *   - system property x_accessgate.endpoint (string, optional): full URL,
 *     https://<accessgate host>/api/servicenow/events. Overrides the REST message endpoint.
 *   - REST message "accessgate" with HTTP method "ticket_closed" (POST). See rest_message.md.
 *
 * Wire contract (accessgate's verifier):
 *   POST <endpoint>, Content-Type: application/json
 *   body: {"table","sys_id","number","state","correlation_id","event":"closed"} (a hint only;
 *         accessgate re-reads the record through the Table API)
 *   X-Accessgate-Timestamp: Unix time in seconds
 *   X-Accessgate-Signature: v1=<base64 HMAC-SHA256(key = secret's UTF-8 bytes,
 *                                                  message = timestamp + "." + body)>
 *
 * Plain ES5 (no let/const/arrow functions/template strings) so it runs on any script engine
 * mode, global or scoped.
 */
(function executeRule(current, previous /* null when async */) {
    var PREFIX = 'accessgate:';
    var SECRET_PROPERTY = 'x_accessgate.webhook_secret';
    var ENDPOINT_PROPERTY = 'x_accessgate.endpoint';
    var REST_MESSAGE = 'accessgate';
    var REST_METHOD = 'ticket_closed';
    var TIMEOUT_MS = 10000;

    function str(v) {
        return (v === null || v === undefined) ? '' : String(v);
    }

    function isTrue(v) {
        v = str(v).toLowerCase();
        return v === 'true' || v === '1';
    }

    // JSON with every character outside printable ASCII, and '$', written as \uXXXX. Still the
    // same JSON value for accessgate, but the bytes are pure ASCII, so the string that is
    // signed and the bytes that go on the wire cannot differ by charset, and no "${...}" is
    // left for REST message variable substitution to touch.
    function asciiJson(value) {
        return JSON.stringify(value).replace(/[^\x20-\x23\x25-\x7e]/g, function (c) {
            return '\\u' + ('0000' + c.charCodeAt(0).toString(16)).slice(-4);
        });
    }

    function base64(text) {
        if (typeof gs.base64Encode === 'function') {
            return gs.base64Encode(text); // scoped and global GlideSystem
        }
        return GlideStringUtil.base64Encode(text); // global only
    }

    function hmacSha256Base64(secret, data) {
        // generateMac takes the key Base64 encoded and returns the MAC in base64.
        var crypto = (typeof CertificateEncryption !== 'undefined')
            ? new CertificateEncryption() // scoped
            : new GlideCertificateEncryption(); // global
        return str(crypto.generateMac(base64(secret), 'HmacSHA256', data));
    }

    // Messages never contain the secret. (No second argument: in gs.info/gs.error it is a
    // {0} substitution parameter, not a log source.)
    function log(level, message) {
        if (level === 'error') {
            gs.error(message);
        } else {
            gs.info(message);
        }
    }

    var table = str(current.getTableName());
    var sysId = str(current.getUniqueValue());
    var number = str(current.getValue('number'));
    var correlationId = str(current.getValue('correlation_id'));
    var where = table + ' ' + (number || sysId);

    // Defence in depth: the rule's conditions already require both.
    if (correlationId.indexOf(PREFIX) !== 0) {
        return; // not an accessgate ticket: send nothing
    }
    if (isTrue(current.getValue('active'))) {
        // Reopened between the close and this async run; a later close fires the rule again.
        log('info', 'accessgate webhook: ' + where + ' is active again, not sent');
        return;
    }

    var secret = str(gs.getProperty(SECRET_PROPERTY, ''));
    if (!secret) {
        log('error', 'accessgate webhook: system property ' + SECRET_PROPERTY +
            ' is not set, not sent for ' + where);
        return;
    }

    var body = asciiJson({
        table: table,
        sys_id: sysId,
        number: number,
        state: str(current.getValue('state')),
        correlation_id: correlationId,
        event: 'closed'
    });
    var timestamp = str(Math.floor(new GlideDateTime().getNumericValue() / 1000));

    try {
        var signature = 'v1=' + hmacSha256Base64(secret, timestamp + '.' + body);
        secret = null;

        var request = new sn_ws.RESTMessageV2(REST_MESSAGE, REST_METHOD);
        var endpoint = str(gs.getProperty(ENDPOINT_PROPERTY, ''));
        if (endpoint) {
            request.setEndpoint(endpoint);
        }
        if (typeof request.disableForcedVariableSubstitution === 'function') {
            request.disableForcedVariableSubstitution(); // send the signed bytes as they are
        }
        request.setHttpTimeout(TIMEOUT_MS);
        request.setRequestHeader('Content-Type', 'application/json');
        request.setRequestHeader('X-Accessgate-Timestamp', timestamp);
        request.setRequestHeader('X-Accessgate-Signature', signature);
        request.setRequestBody(body);

        var response = request.execute();
        var status = parseInt(str(response.getStatusCode()), 10);
        if (!(status >= 200 && status < 300)) {
            var detail = response.haveError() ? str(response.getErrorMessage()) : '';
            log('error', 'accessgate webhook: HTTP ' + (isNaN(status) ? 'no status' : status) +
                ' for ' + where + (detail ? ': ' + detail.substring(0, 500) : ''));
        }
    } catch (ex) {
        var message = (ex && ex.message) ? ex.message
            : ((ex && typeof ex.getMessage === 'function') ? ex.getMessage() : ex);
        log('error', 'accessgate webhook: not sent for ' + where + ': ' +
            str(message).substring(0, 500));
    }
})(current, previous);
