using System.Globalization;
using System.Text.Json;

namespace MoeGrains.Silo.Api;

/// <summary>What the JSON endpoints share: reading a request body, and the OpenAI-style error answers.</summary>
internal static class ApiJson
{
    /// <summary>
    /// Reads the body as one JSON object; anything else is refused through <paramref name="invalid"/> (field, message),
    /// the endpoint's own typed request error.
    /// </summary>
    public static async Task<JsonDocument> ReadObjectAsync(HttpRequest http, Func<string, string, Exception> invalid)
    {
        try
        {
            var document = await JsonDocument.ParseAsync(http.Body, cancellationToken: http.HttpContext.RequestAborted);
            if (document.RootElement.ValueKind != JsonValueKind.Object)
            {
                document.Dispose();
                throw invalid("body", "The body must be a JSON object.");
            }
            return document;
        }
        catch (JsonException e)
        {
            throw invalid("body", string.Create(CultureInfo.InvariantCulture, $"The body is not valid JSON: {e.Message}"));
        }
    }

    /// <summary>A bad request: 400 with <c>{"error": {message, type: "invalid_request_error", param}}</c>.</summary>
    public static IResult BadRequest(string? field, string message) =>
        Results.Json(new { error = new { message, type = "invalid_request_error", param = string.IsNullOrEmpty(field) ? null : field } },
            statusCode: StatusCodes.Status400BadRequest);

    /// <summary>A failure of the cluster, not of the request (a plugin that is not loaded or failed): 503, its message as JSON.</summary>
    public static IResult ServerError(Exception e) =>
        Results.Json(new { error = new { message = e.Message, type = "server_error", param = (string?)null } }, statusCode: StatusCodes.Status503ServiceUnavailable);
}
